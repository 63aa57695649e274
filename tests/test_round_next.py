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
    assert "no reward model" in result.scoring["note"] and "no reward model" in run.metrics["scoring"]["note"]

    mixed = next_round(workspace, k=3, n_prompts=5, max_new_tokens=4, mix_previous=True)
    assert mixed.round == 3 and mixed.previous == "v0" and mixed.comparisons == 1 and mixed.responses == 3
    from store.db import read

    names = read(workspace.db, lambda con: con.execute(
        "SELECT model_name FROM responses WHERE id IN (SELECT unnest(response_ids) FROM comparisons WHERE id = ?)",
        [mixed.comparison_ids[0]]).fetchall())
    assert sorted(n for (n,) in names) == ["v0", "v1", "v1"]


def test_the_new_rounds_candidates_are_scored_and_prioritised(workspace, tiny_lm, tmp_path):
    """With a reward model, `next_round` stores a score for every new candidate under the newest reward model and
    sets each new comparison's priority from its uncertainty; comparisons of other rounds keep theirs."""
    from reward.score import uncertainty_priority
    from rl.rounds import next_round
    from store.db import read
    from store.queue import set_priority
    from store.scores import response_scores
    from tests.policy_helpers import register_reward, tiny_reward_model
    from tests.reward_data import seed_pairs
    from tests.test_policy_eval import seed_prompts

    seed_pairs(workspace.db, n=2, rounds=1)  # round 0, left at priority 0.25
    set_priority(workspace.db, 0.25, actor="t", round=0)
    register_policy(workspace.db, tiny_lm, "v0")
    register_reward(workspace.db, tiny_reward_model(tmp_path / "old", tiny_lm), name="rm-old")
    newest = register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm), name="rm-new")
    seed_prompts(workspace.db, 3, split="train")
    result = next_round(workspace, k=3, n_prompts=3, max_new_tokens=4)
    assert result.scoring["model"] == "rm-new" and result.scoring["responses"] == 9
    assert "scored with reward model 'rm-new'" in result.scoring_line
    rows = read(workspace.db, lambda con: con.execute(
        "SELECT id, round, response_ids, priority FROM comparisons ORDER BY id").fetchall())
    scores = response_scores(workspace.db, newest)
    assert len(scores) == 9
    for cid, rnd, rids, priority in rows:
        if cid in result.comparison_ids:
            assert priority == pytest.approx(uncertainty_priority([scores[r] for r in rids]))
            assert 0 < priority <= 1
        else:
            assert rnd == 0 and priority == 0.25 and not set(rids) & set(scores)


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
    assert "scored with reward model 'rm': 4 responses, queue priority of 2 comparisons" in out.output
    out = runner.invoke(policy_cli(), ["eval", "policy", "v1", "--against", "v0", *w, "--max-new-tokens", "3"])
    assert out.exit_code == 0, out.output
    assert "win rate" in out.output and "report.md" in out.output
    assert [r.kind for r in list_runs(workspace.db)] == ["round", "eval_policy"]
    out = runner.invoke(policy_cli(), ["eval", "policy", "v1", "--against", "nope", *w])
    assert out.exit_code == 1 and "no model named 'nope'" in out.output
