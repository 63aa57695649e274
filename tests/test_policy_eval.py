"""`evaluate_policy` and `next_round` on tiny models: win rate with an interval, KL, report; next round's
comparisons with lineage, optionally mixing in the previous policy."""

from __future__ import annotations

import math

import pytest

from tests.policy_helpers import register_policy, register_reward, tiny_reward_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_policies(workspace, tiny_lm, tmp_path):
    from tests.tiny import build_causal_lm

    other = build_causal_lm(tmp_path / "other", seed=3)
    old_id = register_policy(workspace.db, tiny_lm, "v0")
    register_policy(workspace.db, other, "v1", parent_id=old_id)
    register_reward(workspace.db, tiny_reward_model(tmp_path / "rm", tiny_lm))
    return workspace


def seed_prompts(db, n: int, split: str = "eval") -> None:
    from store.batch import Batch, Prompt, write_batch
    from store.db import write

    batch = Batch(prompts=[Prompt(f"p{i}", [{"role": "user", "content": f"Question {i}?"}], split=split)
                           for i in range(n)])
    write(db, lambda con: write_batch(con, batch))


def test_wilson_interval():
    from training.stats import wilson_interval as wilson

    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_eval_policy_reports_win_rate_kl_and_lengths(two_policies):
    from rl.evaluate import evaluate_policy
    from store.runs import get_run

    ws = two_policies
    seed_prompts(ws.db, 4)
    seed_prompts(ws.db, 2, split="train")  # not held out: not used
    result = evaluate_policy(ws, "v1", "v0", max_new_tokens=6, k=2)
    m = result.metrics
    assert m["prompts"] == 4 and m["comparisons"] == 8
    assert 0 <= m["win_rate_low"] <= m["win_rate"] <= m["win_rate_high"] <= 1
    assert math.isfinite(m["kl_new_vs_against"]) and m["kl_new_vs_against"] > 0  # two different policies
    assert m["length_new_mean"] > 0
    report = (result.report_dir / "report.md").read_text()
    assert "win rate of `v1`" in report and "| prompt |" in report
    assert (result.report_dir / "score_difference.png").is_file()
    assert get_run(ws.db, result.run_id).status == "succeeded"
    same = evaluate_policy(ws, "v0", "v0", max_new_tokens=6, k=2)
    assert same.metrics["win_rate"] == pytest.approx(0.5) and same.metrics["kl_new_vs_against"] == pytest.approx(0)


def test_eval_policy_refuses_a_reward_model_as_policy(two_policies):
    from rl.evaluate import evaluate_policy

    with pytest.raises(ValueError, match="is a reward model"):
        evaluate_policy(two_policies, "rm", "v0")
