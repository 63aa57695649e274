"""`next_round`: the newest policy's candidates queued as the next round, with lineage on a run row."""

from __future__ import annotations

import pytest

from tests.policy_helpers import register_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_next_queues_the_newest_policy_with_lineage(workspace, tiny_lm):
    from rl.rounds import next_round
    from store.runs import get_run
    from tests.reward_data import seed_pairs
    from tests.test_policy_eval import seed_prompts

    seed_pairs(workspace.db, n=4, rounds=2)  # rounds 0 and 1 exist
    v0 = register_policy(workspace.db, tiny_lm, "v0")
    register_policy(workspace.db, tiny_lm, "v1", parent_id=v0)
    seed_prompts(workspace.db, 3, split="train")
    result = next_round(workspace, k=2, n_prompts=2, max_new_tokens=4)
    assert result.round == 2 and result.policy == "v1" and result.comparisons == 2 and result.responses == 4
    run = get_run(workspace.db, result.run_id)
    assert run.kind == "round" and run.status == "succeeded"
    assert run.data_snapshot["policy"] == "v1" and run.data_snapshot["parent_id"] == v0
    assert run.data_snapshot["comparison_ids"] == result.comparison_ids

    mixed = next_round(workspace, k=3, n_prompts=5, max_new_tokens=4, mix_previous=True)
    assert mixed.round == 3 and mixed.previous == "v0" and mixed.comparisons == 1 and mixed.responses == 3
    from store.db import read

    names = read(workspace.db, lambda con: con.execute(
        "SELECT model_name FROM responses WHERE id IN (SELECT unnest(response_ids) FROM comparisons WHERE id = ?)",
        [mixed.comparison_ids[0]]).fetchall())
    assert sorted(n for (n,) in names) == ["v0", "v1", "v1"]


def test_mix_previous_needs_a_parent(workspace, tiny_lm):
    from rl.rounds import next_round

    register_policy(workspace.db, tiny_lm, "v0")
    with pytest.raises(ValueError, match="no parent"):
        next_round(workspace, mix_previous=True)


def test_cli_round_next_and_eval_policy(workspace, tiny_lm, tmp_path):
    from click.testing import CliRunner

    from store.runs import list_runs
    from tests.policy_helpers import register_reward, tiny_reward_model
    from tests.test_dpo import policy_cli
    from tests.test_policy_eval import seed_prompts

    v0 = register_policy(workspace.db, tiny_lm, "v0")
    register_policy(workspace.db, tiny_lm, "v1", parent_id=v0)
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    seed_prompts(workspace.db, 2, split="eval")
    runner = CliRunner()
    w = ["-w", str(workspace.root)]
    out = runner.invoke(policy_cli(), ["round", "next", *w, "--k", "2", "--prompts", "2", "--max-new-tokens", "3"])
    assert out.exit_code == 0, out.output
    assert "round 0: 2 comparisons (4 responses) from 'v1'" in out.output
    out = runner.invoke(policy_cli(), ["eval", "policy", "v1", "--against", "v0", *w, "--max-new-tokens", "3"])
    assert out.exit_code == 0, out.output
    assert "win rate" in out.output and "report.md" in out.output
    assert [r.kind for r in list_runs(workspace.db)] == ["round", "eval_policy"]
    out = runner.invoke(policy_cli(), ["eval", "policy", "v1", "--against", "nope", *w])
    assert out.exit_code == 1 and "no model named 'nope'" in out.output
