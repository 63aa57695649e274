"""Reward evaluation: exact numbers on a hand-made set, and the report of a trained tiny model."""

from __future__ import annotations

import json
import math

import pytest

from reward.evaluate import evaluate_reward_model, group_metrics, pair_metrics, reliability
from reward.train import train_reward_model
from store.runs import get_run
from tests.reward_data import register_tiny, seed_pairs, tiny_config
from training.stats import wilson_interval

# Hand-made: score gaps 1, 0, -1, 3 -> right, tie (a half), wrong, right.
CHOSEN = [2.0, 0.0, 1.0, 3.0]
REJECTED = [1.0, 0.0, 2.0, 0.0]
CHOSEN_TEXT = ["aaa", "bb", "c", "dd"]
REJECTED_TEXT = ["a", "bb", "cc", "ddd"]  # longer wins: right, tie, wrong, wrong


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)  # the usual worked example: 0.490 - 0.943
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and round(low, 4) == 0.7225


def test_pair_metrics_on_a_hand_made_set_are_exact():
    m = pair_metrics(CHOSEN, REJECTED, CHOSEN_TEXT, REJECTED_TEXT)
    assert m["pairs"] == 4 and m["accuracy"] == 0.625  # (1 + 0.5 + 0 + 1) / 4
    assert (round(m["accuracy_low"], 4), round(m["accuracy_high"], 4)) == (0.2194, 0.9081)
    assert m["mean_gap"] == 0.75  # (1 + 0 - 1 + 3) / 4
    assert m["length_longer_accuracy"] == 0.375 and m["length_shorter_accuracy"] == 0.625
    s1, s3 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-3))
    # bins: [0.5, 0.6): the tie (conf 0.5, right a half); [0.7, 0.8): gaps +1 and -1 (conf s1, one right);
    # [0.9, 1.0]: gap 3 (conf s3, right)
    assert m["ece"] == pytest.approx(2 / 4 * abs(0.5 - s1) + 1 / 4 * abs(1 - s3), abs=1e-12)


def test_reliability_bins_and_group_accuracy_are_exact():
    bins, _ = reliability(CHOSEN, REJECTED)
    assert [b["count"] for b in bins] == [1, 0, 2, 0, 1]
    assert bins[2]["accuracy"] == 0.5 and bins[2]["confidence"] == pytest.approx(1 / (1 + math.exp(-1)))
    groups = group_metrics([0, 0, 1, 1], CHOSEN, REJECTED)
    assert [(g["group"], g["pairs"], g["accuracy"]) for g in groups] == [(0, 2, 0.75), (1, 2, 0.5)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_lm):
    from rankloop.workspace import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("eval") / "ws")
    register_tiny(ws.db, tiny_lm)
    seed_pairs(ws.db)
    result = train_reward_model(ws, tiny_config(max_steps=12, eval_steps=6), progress=False)
    return ws, result


def test_report_on_held_out_prompts_with_rounds_and_reviewers(trained):
    ws, result = trained
    ev = evaluate_reward_model(ws, result.model_name)
    run = get_run(ws.db, result.run_id)
    assert ev.metrics["pairs"] == run.data_snapshot["eval_pairs"]
    assert ev.metrics["accuracy"] == pytest.approx(result.metrics["eval_accuracy"], abs=1e-9), \
        "scoring a saved model reproduces the training run's own held-out measurement"
    assert {g["group"] for g in ev.by_round} <= {0, 1} and {g["group"] for g in ev.by_reviewer} <= {"alice", "bob"}
    assert ev.report_dir.parent == result.run_dir
    for name in ("report.md", "accuracy.png", "reliability.png", "metrics.json"):
        assert (ev.report_dir / name).is_file(), name
    text = (ev.report_dir / "report.md").read_text(encoding="utf-8")
    assert "length baseline: longer wins" in text and "Per reviewer" in text and "95% interval" in text
    eval_run = get_run(ws.db, ev.run_id)
    assert eval_run.kind == "reward-eval" and eval_run.status == "succeeded"
    assert eval_run.output_path == str(ev.report_dir)


def test_eval_on_a_pairs_file(trained, tmp_path):
    ws, result = trained
    path = tmp_path / "pairs.jsonl"
    prompt, good, bad = "\n\nHuman: hi\n\nAssistant:", " The capital of France is Paris.", \
        " I am sorry, I cannot help with that."
    rows = [{"prompt": prompt, "chosen": good, "rejected": bad}] * 2 + [{"prompt": prompt, "chosen": bad,
                                                                       "rejected": good}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ev = evaluate_reward_model(ws, result.model_name, pairs_file=path)
    from reward.score import RewardScorer

    g, b = RewardScorer(result.model_dir).score([prompt, prompt], [good, bad])  # the file's pairs, scored apart
    assert g != b, "the pairs must separate the model's scores for the accuracy to say anything"
    assert ev.metrics["pairs"] == 3 and ev.by_round == [] and ev.by_reviewer == []
    assert ev.metrics["accuracy"] == pytest.approx((2 * (g > b) + (b > g)) / 3)  # 2/3 or 1/3, by the model
    assert ev.metrics["mean_gap"] == pytest.approx((2 * (g - b) + (b - g)) / 3, abs=1e-5)
    assert ev.metrics["length_longer_accuracy"] == pytest.approx(1 / 3)  # only the reversed row's chosen is longer
    saved = json.loads((ev.report_dir / "metrics.json").read_text(encoding="utf-8"))
    assert saved["source"] == str(path)


def test_unknown_model_and_bad_file_are_clear_errors(trained, tmp_path):
    from store.errors import InputError
    from store.models import UnknownModel

    ws, result = trained
    with pytest.raises(UnknownModel, match="no model named 'nope'"):
        evaluate_reward_model(ws, "nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="field 'rejected': missing"):
        evaluate_reward_model(ws, result.model_name, pairs_file=bad)
