"""`accelerate launch` for the policy trainers: only the main process reads the workspace and writes the run and
the model, the others train on what it shares; a failure on any process ends the run as failed on the main one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import training.distributed as distributed
from store.models import list_models
from store.runs import get_run, list_runs
from tests.conftest import table_hash
from tests.reward_data import register_tiny, seed_pairs
from tests.test_dpo import tiny_dpo
from tests.test_kto import seed_thumbs, tiny_kto

ROOT = Path(__file__).resolve().parent.parent
MAIN = SimpleNamespace(is_main_process=True, num_processes=2, process_index=0)
OTHER = SimpleNamespace(is_main_process=False, num_processes=2, process_index=1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_a_non_main_process_trains_on_the_shared_run_and_never_writes(workspace, tiny_lm, monkeypatch, kind):
    from transformers import TrainerCallback

    from rl.dpo import train_dpo
    from rl.kto import train_kto
    from rl.training import prepare_policy_run

    register_tiny(workspace.db, tiny_lm)
    if kind == "dpo":
        seed_pairs(workspace.db, n=8)
        config, train, rows_kind = tiny_dpo(max_steps=2, eval_steps=100), train_dpo, "pairs"
    else:
        seed_thumbs(workspace.db, n=6)
        config, train, rows_kind = tiny_kto(max_steps=2, eval_steps=100), train_kto, "kto"
    prepared = prepare_policy_run(workspace, kind, rows_kind, config, None)  # what the main process shares
    before = table_hash(workspace.db)
    shared = []
    monkeypatch.setattr(distributed, "process_state", lambda: OTHER)
    monkeypatch.setattr(distributed, "share", lambda state, value: shared.append(value) or prepared)

    class Steps(TrainerCallback):
        losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    result = train(workspace, config, progress=False, callbacks=[Steps()])
    assert shared == [None], "a non-main process has nothing of its own to share"
    assert result.model_name is None and result.run_id == prepared["run_id"]
    assert len(Steps.losses) == 2, "it trained both steps"
    assert (prepared["run_dir"] / "adapter" / "adapter_config.json").is_file()  # its part of the collective save
    assert not (prepared["run_dir"] / "model").exists(), "only the main process merges and saves the policy"
    assert table_hash(workspace.db) == before, "no run update, no model row from a non-main process"
    assert get_run(workspace.db, prepared["run_id"]).status == "running"


def _open(workspace):
    from training.runs import open_run

    return open_run(workspace, "dpo", {"config": {}})


def test_another_process_failing_fails_the_run_on_the_main_one(workspace):
    run_id, run_dir = _open(workspace)
    before = table_hash(workspace.db)
    with pytest.raises(RuntimeError), distributed.every_process_guard(OTHER, workspace.db, run_id, run_dir):
        raise RuntimeError("out of memory on process 1")
    assert table_hash(workspace.db) == before, "the failing non-main process leaves the row to the main one"
    original = signal.getsignal(signal.SIGTERM)
    with pytest.raises(distributed.OtherProcessFailed), \
            distributed.every_process_guard(MAIN, workspace.db, run_id, run_dir):
        handler = signal.getsignal(signal.SIGTERM)  # the launcher's SIGTERM once process 1 exited
        assert callable(handler) and handler is not original
        handler(signal.SIGTERM, None)
    run = get_run(workspace.db, run_id)
    assert run.status == "failed"
    assert run.error == "OtherProcessFailed: process 1 of 2 failed: RuntimeError: out of memory on process 1"
    assert signal.getsignal(signal.SIGTERM) is original


def test_the_main_process_failing_after_another_names_both(workspace):
    run_id, run_dir = _open(workspace)
    with pytest.raises(ValueError), distributed.every_process_guard(OTHER, workspace.db, run_id, run_dir):
        raise ValueError("bad batch")
    with pytest.raises(RuntimeError), distributed.every_process_guard(MAIN, workspace.db, run_id, run_dir):
        raise RuntimeError("Connection closed by peer")  # gloo, when the peer has gone
    assert get_run(workspace.db, run_id).error == (
        "OtherProcessFailed: process 1 of 2 failed: ValueError: bad batch (then on the main process: RuntimeError: "
        "Connection closed by peer)")
    run_id, run_dir = _open(workspace)  # SIGTERM with no note (a process killed outright): still failed
    with pytest.raises(distributed.OtherProcessFailed), \
            distributed.every_process_guard(MAIN, workspace.db, run_id, run_dir):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    run = get_run(workspace.db, run_id)
    assert run.status == "failed" and "stopped by SIGTERM" in run.error


def _wait_closed(db, run_id, seconds: float = 10.0):
    import time

    deadline = time.monotonic() + seconds
    while get_run(db, run_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return get_run(db, run_id)


def test_the_run_is_closed_while_the_main_thread_is_stuck(workspace):
    """The main thread blocked in a collective (NCCL waits for a dead peer) runs no Python signal handler: a watcher
    thread closes the row on another process's note, or on the launcher's SIGTERM (through the wakeup fd)."""
    run_id, run_dir = _open(workspace)
    with pytest.raises(distributed.OtherProcessFailed), \
            distributed.every_process_guard(MAIN, workspace.db, run_id, run_dir):
        note = distributed.failure_note(run_dir, run_id, 1)
        note.parent.mkdir(parents=True)
        note.write_text("process 1 of 2 failed: RuntimeError: CUDA error: an illegal memory access")
        run = _wait_closed(workspace.db, run_id)  # the main thread never raises meanwhile
        assert run.status == "failed" and run.error.endswith("an illegal memory access")
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    run_id, run_dir = _open(workspace)
    original = signal.signal(signal.SIGTERM, lambda *_: None)  # stands for a main thread that cannot run handlers
    try:
        watcher = distributed._Watcher(workspace.db, run_id, run_dir, lambda: "stopped by SIGTERM", True)
        os.kill(os.getpid(), signal.SIGTERM)
        run = _wait_closed(workspace.db, run_id)
        watcher.stop()
    finally:
        signal.signal(signal.SIGTERM, original)
    assert run.status == "failed" and run.error == "OtherProcessFailed: stopped by SIGTERM"


def launch(ws, config: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/<config>.yaml --num_processes 2 -m rankloop train dpo`
    on two CPU processes (gloo): ACCELERATE_USE_CPU, no CUDA device (`--cpu` would start one process only)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           str(ROOT / "tests" / "policy_launch.py"), "train", "dpo", "--workspace", str(ws.root), "--policy", "tiny",
           "--set", "report_to=[]", "--set", "per_device_train_batch_size=2", "--set", "logging_steps=1",
           "--no-progress", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dpo_on_two_cpu_processes_with_the_fsdp_config(workspace, tiny_lm):
    import torch
    from safetensors.torch import load_file

    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, n=12)
    done = launch(workspace, "fsdp", "--max-steps", "3", "--set", "eval_steps=2", "--set", "eval_fraction=0.25")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("policy 'dpo-run1'") == 1, "only the main process reports"
    (run,) = list_runs(workspace.db, kind="dpo")
    assert run.status == "succeeded" and run.metrics["global_step"] == 3
    # accelerate (1.15) turns FSDP on only for GPU-like process groups: on CPUs the config runs as plain
    # data parallel (MULTI_CPU, gloo); the run row says which it was
    assert run.metrics["distributed"] == {"processes": 2, "type": "MULTI_CPU"}
    assert [m.name for m in list_models(workspace.db, kind="policy")] == ["tiny", "dpo-run1"]
    before = load_file(str(tiny_lm / "model.safetensors"))
    after = load_file(str(Path(run.output_path) / "model" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed), "the LoRA update is merged into the saved policy"


@pytest.mark.slow
def test_a_process_failing_under_accelerate_launch_fails_the_run(workspace, tiny_lm):
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, n=12)
    done = launch(workspace, "ddp", "--max-steps", "6", "--set", "eval_steps=100", "--set", "save_steps=100",
                  env={"RANKLOOP_TEST_FAIL_PROCESS": "1"})
    assert done.returncode != 0
    (run,) = list_runs(workspace.db, kind="dpo")
    assert run.status == "failed", run
    assert "process 1 of 2 failed: RuntimeError: injected failure on process 1 at step 2" in run.error
    assert [m.name for m in list_models(workspace.db, kind="policy")] == ["tiny"]


def test_rloo_and_grpo_split_each_rollout_batch_between_the_processes(tmp_path):
    from rl.rloo_grpo import trl_args
    from tests.test_rloo_grpo import config
    from training.device import training_defaults

    dev = training_defaults("cpu", 10_000)
    settings = config(algo="grpo", rollout_batch_size=4, num_generations=3, num_minibatches=2)
    assert trl_args(settings, tmp_path, dev, False).per_device_train_batch_size == 6
    # 12 completions per iteration = 2 micro-batches x 2 processes x 3: the iteration stays the config's
    assert trl_args(settings, tmp_path, dev, False, processes=2).per_device_train_batch_size == 3
    with pytest.raises(ValueError, match=r"12 completions .* num_minibatches \(2\) x 4 processes"):
        trl_args(settings, tmp_path, dev, False, processes=4)
