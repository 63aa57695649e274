"""`accelerate launch`: only the main process touches the workspace; the others train on what it shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import reward.train as reward_train
import training.distributed as distributed
from store.models import list_models
from store.runs import list_runs
from tests.conftest import table_hash
from tests.reward_data import register_tiny, seed_pairs, tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ws(workspace, tiny_lm):
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, n=12)
    return workspace


def test_a_non_main_process_trains_on_the_shared_snapshot_and_never_writes(ws, monkeypatch):
    config = tiny_config(max_steps=2)
    prepared = reward_train._prepare_run(ws, config, None)  # what the main process broadcasts
    before = table_hash(ws.db)
    shared = []
    monkeypatch.setattr(distributed, "process_state", lambda: SimpleNamespace(is_main_process=False,
                                                                             num_processes=2, process_index=1))
    monkeypatch.setattr(distributed, "share", lambda state, value: shared.append(value) or prepared)
    result = reward_train.train_reward_model(ws, config, progress=False)
    assert shared == [None], "a non-main process has nothing of its own to share"
    assert result.model_name is None and result.run_id == prepared["run_id"]
    assert table_hash(ws.db) == before, "no run update, no model row from a non-main process"


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(ws):
    # two CPU processes (gloo) under the shipped DDP config: accelerate's `--cpu` would start one process only
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           str(ROOT / "tests" / "reward_launch.py"),
           "train", "reward", "--workspace", str(ws.root), "--base", "tiny", "--set", "method=lora",
           "--max-steps", "3", "--set", "eval_steps=2", "--set", "report_to=[]", "--set", "eval_fraction=0.25",
           "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    other = "\n".join(line for line in done.stderr.splitlines() if "[rank1]" in line)
    assert done.returncode == 0, f"process 1:\n{other[-3000:]}\nend of the launch's output:\n{done.stderr[-3000:]}"
    assert done.stdout.count("reward model 'reward-run1'") == 1
    (run,) = list_runs(ws.db, kind="reward")
    assert run.status == "succeeded" and run.metrics["global_step"] == 3
    assert [m.name for m in list_models(ws.db, kind="reward")] == ["reward-run1"]
