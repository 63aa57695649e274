"""Every `rankloop train` command at its edge: one step through the real CLI on the tiny models, with the
trainers' own logging and evaluation intervals (far longer than the run), ends in its summary and a registered
model; an option the chosen method never reads is refused, naming it, before any run starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from store.models import get_model
from store.runs import list_runs
from tests.conftest import table_hash
from tests.reward_data import register_tiny, seed_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

PPO_SMALL = ["--set", "rollout_batch_size=2", "--set", "num_minibatches=1", "--set", "max_new_tokens=4",
             "--set", "splits=[]", "--max-prompts", "2"]
GROUPS = ["--set", "num_generations=2"]  # rloo/grpo only: our PPO refuses it
COMMANDS = {  # name -> (argv after `train`, what the summary says, the run kind)
    "reward-probe": (["reward", "--base", "tiny", "--max-pairs", "12"], "probe on layer", "reward"),
    "reward-full": (["reward", "--base", "tiny", "--full", "--max-steps", "1"], "1 steps in", "reward"),
    "sft": (["sft", "--policy", "tiny", "--max-steps", "1"], "1 steps in", "sft"),
    "dpo": (["dpo", "--policy", "tiny", "--max-steps", "1"], "1 steps in", "dpo"),
    "ppo": (["ppo", "--policy", "tiny", "--max-steps", "1", *PPO_SMALL], "1 iterations in", "ppo"),
    "rloo": (["ppo", "--algo", "rloo", "--policy", "tiny", "--max-steps", "1", *PPO_SMALL, *GROUPS], "1 iterations in",
             "ppo"),
    "grpo": (["ppo", "--algo", "grpo", "--policy", "tiny", "--max-steps", "1", *PPO_SMALL, *GROUPS], "1 iterations in",
             "ppo"),
}


@pytest.fixture
def ws(workspace, tiny_lm, tmp_path):
    from tests.policy_helpers import register_reward, tiny_reward_model

    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, n=12)
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    return workspace


def train(ws, *argv: str):
    from rankloop.cli import main

    return CliRunner().invoke(main, ["train", *argv, "--workspace", str(ws.root), "--no-progress", "--name", "new"])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_train_command_survives_a_one_step_run(ws, command):
    argv, summary, kind = COMMANDS[command]
    result = train(ws, *argv)
    assert result.exit_code == 0, result.output
    assert summary in result.output and "Traceback" not in result.output, result.output
    row = get_model(ws.db, "new")
    (run,) = list_runs(ws.db, kind=kind)
    assert run.status == "succeeded" and row.run_id == run.id
    assert row.metrics["global_step"] == (0 if command == "reward-probe" else 1)


@pytest.mark.parametrize(("argv", "named"), [
    (["--max-steps", "2"], "--max-steps"),
    (["--lr", "1e-3", "--epochs", "2"], "--epochs, --lr"),
    (["--set", "lora_r=4"], "--set lora_r"),
])
def test_train_reward_refuses_what_the_probe_never_reads(ws, argv, named):
    before = table_hash(ws.db)
    result = train(ws, "reward", "--base", "tiny", *argv)
    assert result.exit_code == 1
    assert f"{named}: method 'probe' (the default)" in result.output and "--full" in result.output, result.output
    assert table_hash(ws.db) == before, "refused before any run row"
