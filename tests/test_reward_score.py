"""Scoring: the Python API for PPO, stored scores per response and model, and priority from uncertainty."""

from __future__ import annotations

import math

import pytest

from reward.score import RewardScorer, score_responses, uncertainty_priority
from reward.train import train_reward_model
from store.db import read, write
from store.models import add_model, get_model
from store.scores import response_scores
from tests.preferences import Seed
from tests.reward_data import BAD, GOOD, MIDDLE, register_tiny, reward_cli, seed_pairs, tiny_config


def test_uncertainty_priority_is_exact():
    assert uncertainty_priority([0.3, 0.3, 2.0]) == 1.0  # a tie: the model cannot tell them apart
    assert uncertainty_priority([0.0, 1.0, 3.0]) == pytest.approx(2 / (1 + math.e))  # smallest gap 1
    assert uncertainty_priority([5.0]) == 0.0
    assert uncertainty_priority([0.0, 1000.0]) == pytest.approx(0.0, abs=1e-300)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_lm):
    from rankloop.workspace import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("score") / "ws")
    register_tiny(ws.db, tiny_lm)
    seed_pairs(ws.db, n=12)
    result = train_reward_model(ws, tiny_config(max_steps=4), progress=False)
    new = Seed()
    new.comparison("tie", "Question 99: say something useful.", {"a": GOOD, "b": GOOD, "c": BAD}, round=2)
    new.comparison("clear", "Question 98: say something useful.", {"a": GOOD, "b": MIDDLE, "c": BAD}, round=2)
    ids = new.write(ws.db)
    return ws, result, ids


def _priorities(ws) -> dict[int, float]:
    return dict(read(ws.db, lambda con: con.execute("SELECT id, priority FROM comparisons").fetchall()))


def test_score_a_round_stores_scores_and_puts_the_uncertain_comparison_first(scored):
    ws, result, ids = scored
    out = score_responses(ws, result.model_name, round=2)
    model_id = get_model(ws.db, result.model_name).id
    stored = response_scores(ws.db, model_id)
    assert out.responses == len(stored) == 6 and out.comparisons == 2
    prio = _priorities(ws)
    assert prio[ids("tie")] == 1.0 and prio[ids("tie")] > prio[ids("clear")]
    clear = [stored[ids(f"clear/{x}")] for x in "abc"]
    assert prio[ids("clear")] == pytest.approx(uncertainty_priority(clear))
    assert all(p == 0.0 for cid, p in prio.items() if cid not in (ids("tie"), ids("clear"))), "other rounds untouched"


def test_rescoring_replaces_and_the_python_api_gives_the_stored_scores(scored):
    ws, result, ids = scored
    score_responses(ws, result.model_name)
    score_responses(ws, result.model_name)  # idempotent: one score per response and model
    model_id = get_model(ws.db, result.model_name).id
    stored = response_scores(ws.db, model_id)
    assert len(stored) == 12 * 3 + 6
    scorer = RewardScorer(result.model_dir)
    prompt = "Question 98: say something useful."  # stored with its text, so scored as that text
    mine = scorer.score([prompt] * 3, [GOOD, MIDDLE, BAD])
    chat = scorer.score([[{"role": "user", "content": prompt}]], [GOOD])  # messages: the chat template
    assert len(chat) == 1 and isinstance(chat[0], float)
    assert mine == pytest.approx([stored[ids(f"clear/{x}")] for x in "abc"], abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer.score(["a", "b"], ["x"])


@pytest.mark.both_backends
def test_score_with_no_round_scores_only_the_pending_comparisons_and_all_scores_every_one(scored, workspace):
    from click.testing import CliRunner

    _, result, _ = scored
    ws = workspace  # its own workspace (the module's is shared by the tests above), on DuckDB and on PostgreSQL
    model_id = add_model(ws.db, "rm", "reward", path=str(result.model_dir))
    seed = Seed()
    seed.comparison("done", "Question 1: say something useful.", {"a": GOOD, "b": MIDDLE, "c": BAD})
    seed.judge("done", "alice", "a>b>c")
    seed.comparison("open", "Question 2: say something useful.", {"a": GOOD, "b": BAD})  # round 0 too
    seed.comparison("half", "Question 3: say something useful.", {"a": GOOD, "b": BAD}, round=1)
    seed.judge("half", "bob", "a>b")
    seed.judge("half", "carol", skipped=True)  # a skip does not count towards completion
    ids = seed.write(ws.db)
    write(ws.db, lambda con: con.execute("UPDATE comparisons SET required_reviewers = 2 WHERE id = ?",
                                         [ids("half")]))
    w = ["--workspace", str(ws.root)]

    out = CliRunner().invoke(reward_cli(), ["score", *w], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "scored 4 responses of 2 pending comparisons with 'rm'" in out.output
    assert "set the priority of 2 comparisons" in out.output
    pending = {ids(f"{k}/{x}") for k in ("open", "half") for x in "ab"}
    assert set(response_scores(ws.db, model_id)) == pending
    assert _priorities(ws)[ids("done")] == 0.0 and _priorities(ws)[ids("open")] > 0.0

    out = CliRunner().invoke(reward_cli(), ["score", *w, "--all"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "scored 7 responses of 3 comparisons (all) with 'rm'" in out.output
    assert set(response_scores(ws.db, model_id)) == pending | {ids(f"done/{x}") for x in "abc"}

    out = CliRunner().invoke(reward_cli(), ["score", *w, "--round", "0", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert '"scope": "round 0"' in out.output and '"responses": 5' in out.output  # --round R: all of round R
