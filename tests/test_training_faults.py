"""Training under faults, for `rankloop train reward|dpo|ppo` with tiny models.

- A real `rankloop train` process killed with SIGKILL after its first checkpoint, then `--resume`: the resumed run
  ends at the step an uninterrupted run ends at (max_steps; early stopping off), its row points at the killed one
  (now cancelled) and shares its folder, and the logged metrics run on from the killed run's (a loss at every
  step, each once).
- A checkpoint file truncated or garbled: `--resume` exits 1 with one line naming the file.
- A NaN loss (a starting model with a NaN weight): the run stops with a message, its row is failed, and no model
  row or model folder is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from store.models import list_models
from store.runs import list_runs
from tests.policy_helpers import register_reward, tiny_reward_model
from tests.reward_data import register_tiny, seed_pairs
from training.checks import complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
COMMON = ["--max-steps", str(STEPS), "--set", "logging_steps=1", "--set", "report_to=[]", "--no-progress"]
ARGS = {
    "reward": ["--base", "tiny", "--set", "method=lora", "--set", "eval_steps=2", "--set", "eval_fraction=0.25",
               "--set", "early_stopping_patience=0", *COMMON],
    "dpo": ["--policy", "tiny", "--set", "save_steps=2", "--set", "eval_steps=4", "--set", "eval_fraction=0.25",
            "--set", "early_stopping_patience=0", "--set", "per_device_train_batch_size=4", *COMMON],
    "ppo": ["--policy", "tiny", "--reward", "rm", "--set", "save_steps=2", "--set", "rollout_batch_size=4",
            "--set", "num_minibatches=2", "--set", "max_new_tokens=8", "--set", "splits=[]", *COMMON],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ws(workspace, tiny_lm, tmp_path):
    register_tiny(workspace.db, tiny_lm)
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    seed_pairs(workspace.db, n=12)
    return workspace


def cli(*args: str):
    from rankloop.cli import main

    return CliRunner().invoke(main, list(args))


def run_dir(ws, kind: str) -> Path:
    return Path(list_runs(ws.db, kind=kind)[0].output_path)


def kill_after_first_checkpoint(ws, kind: str) -> int:
    """Start `rankloop train KIND` as a process and SIGKILL it once its first complete checkpoint is on disk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rankloop", "train", kind, "--workspace", str(ws.root),
                             *ARGS[kind]], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while True:  # watch the files, not the database: the trainer should not wait for our locks
            if any(complete_checkpoints(d) for d in ws.runs_dir.glob(f"{kind}-*")):
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    (killed,) = list_runs(ws.db, kind=kind)
    assert killed.status == "running"  # what a SIGKILL leaves behind: nobody closed the row
    return killed.id


def logged_steps(kind: str, folder: Path) -> list[int]:
    """The steps with a logged training loss, from the run's own record of its metrics."""
    if kind == "ppo":
        return [json.loads(line)["step"] for line in (folder / "history.jsonl").read_text().splitlines()]
    state = json.loads((complete_checkpoints(folder)[-1] / "trainer_state.json").read_text())
    return [row["step"] for row in state["log_history"] if "loss" in row]


@pytest.mark.parametrize("kind", ["reward", "dpo", "ppo"])
def test_a_killed_run_resumes_to_the_same_final_step_and_its_metrics_continue(ws, kind):
    killed_id = kill_after_first_checkpoint(ws, kind)
    folder = run_dir(ws, kind)
    cut_at = int(complete_checkpoints(folder)[-1].name.split("-")[1])
    assert cut_at < STEPS

    result = cli("train", kind, "--workspace", str(ws.root), "--resume", "--no-progress")
    assert result.exit_code == 0, result.output
    killed, resumed = list_runs(ws.db, kind=kind)
    assert killed.id == killed_id and killed.status == "cancelled" and f"resumed by run {resumed.id}" in killed.error
    assert resumed.status == "succeeded" and resumed.config["resumed_from"] == killed_id
    assert resumed.output_path == killed.output_path
    assert resumed.metrics["global_step"] == STEPS  # an uninterrupted run's: max_steps, early stopping off
    assert logged_steps(kind, folder) == list(range(1, STEPS + 1)), "the metrics run on from the killed run's"
    assert [m.run_id for m in list_models(ws.db, kind="reward" if kind == "reward" else "policy")
            if m.run_id is not None] == [resumed.id]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # garble: overwrite bytes in the middle (a zip archive's CRC, a safetensors/JSON header at the start)
        mid = 0 if path.suffix in (".json", ".safetensors") else len(data) // 2
        path.write_bytes(data[:mid] + b"\xff" * 64 + data[mid + 64:])


@pytest.mark.parametrize("kind, target, how", [
    ("reward", "trainer_state.json", "garble"),
    ("dpo", "adapter_model.safetensors", "truncate"),
    ("ppo", "ppo_state.pt", "garble"),
])
def test_a_corrupt_checkpoint_file_is_a_one_line_error_naming_it(ws, kind, target, how):
    from training.checks import check_checkpoint

    args = [a for a in ARGS[kind] if a != str(STEPS)]
    args[args.index("--max-steps") + 1:args.index("--max-steps") + 1] = ["2"]
    result = cli("train", kind, "--workspace", str(ws.root), *args)
    assert result.exit_code == 0, result.output
    checkpoint = complete_checkpoints(run_dir(ws, kind))[-1]
    check_checkpoint(checkpoint)  # whole as written
    damaged = checkpoint / target
    _damage(damaged, how)
    # the finished run cannot be resumed; mark it interrupted as a kill would have left it
    from store.runs import finish_run

    finish_run(ws.db, list_runs(ws.db, kind=kind)[0].id, "failed", error="simulated crash")
    before = [m.name for m in list_models(ws.db)]
    result = cli("train", kind, "--workspace", str(ws.root), "--resume", "--max-steps", "4", "--no-progress")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {damaged}: corrupt checkpoint file"), result.output
    assert result.output.rstrip().endswith(errors[0]), "the message is one line, and the last"
    assert [m.name for m in list_models(ws.db)] == before


def _nan_copy(src: Path, dest: Path) -> Path:
    """A copy of a model folder with one weight set to NaN, so the first loss is NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    weights = load_file(str(dest / "model.safetensors"))
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("kind", ["reward", "dpo", "ppo"])
def test_a_nan_loss_stops_the_run_and_saves_no_model(ws, kind, tiny_lm, tmp_path):
    from store.models import add_model

    if kind == "ppo":  # a reward model scoring NaN makes the PPO loss NaN
        rm = _nan_copy(tmp_path / "rm", tmp_path / "rm-nan")
        add_model(ws.db, "nan", "reward", base=str(rm), path=str(rm))
        args = [*ARGS[kind], "--reward", "nan"]
    else:  # a starting model with a NaN weight
        nan = _nan_copy(tiny_lm, tmp_path / "lm-nan")
        add_model(ws.db, "nan", "policy", base=str(nan), path=str(nan))
        flag = "--base" if kind == "reward" else "--policy"
        args = [*ARGS[kind], flag, "nan"]
    models_before = [m.name for m in list_models(ws.db)]
    result = cli("train", kind, "--workspace", str(ws.root), *args)
    assert result.exit_code == 1, result.output
    assert "training stopped at step 1" in result.output and "NaN" in result.output, result.output
    (run,) = list_runs(ws.db, kind=kind)
    assert run.status == "failed" and "NonFiniteLoss: training stopped at step 1" in run.error
    assert [m.name for m in list_models(ws.db)] == models_before
    assert not (Path(run.output_path) / "model").exists()
