"""Reviewer influence (reward/influence.py, `rankloop eval influence`): leaving out a reviewer whose labels are random
helps the probe most; the report is a run the agreement page shows, next to the flagged reviewers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reward_data import register_tiny, seed_pairs, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_reviewer_with_random_labels_has_the_largest_leave_out_gain():
    from reward.influence import leave_one_reviewer_out

    rng = np.random.default_rng(0)
    d, w = 12, rng.normal(size=12)

    def pairs(n: int, random_labels: bool = False):
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        better = (a - b) @ w > 0
        if random_labels:
            better = rng.random(n) < 0.5
        return np.where(better[:, None], a, b), np.where(better[:, None], b, a)

    chosen, rejected, reviewers = [], [], []
    for name, n, random_labels in (("ana", 40, False), ("bo", 40, False), ("cy", 40, False), ("rando", 120, True)):
        c, r = pairs(n, random_labels)
        chosen.append(c), rejected.append(r), reviewers.extend([name] * n)
    held_c, held_r = pairs(400)
    report = leave_one_reviewer_out(np.concatenate(chosen), np.concatenate(rejected), reviewers, held_c, held_r,
                                    penalty=0.01)
    gains = {r["reviewer"]: r["gain"] for r in report["reviewers"]}
    assert report["reviewers"][0]["reviewer"] == "rando" and gains["rando"] > 0.03, gains
    assert all(gains[n] < gains["rando"] for n in ("ana", "bo", "cy"))
    assert report["train_pairs"] == 240 and report["eval_pairs"] == 400
    without = {r["reviewer"]: r for r in report["reviewers"]}["rando"]
    assert without["accuracy_without"] == pytest.approx(report["accuracy"] + gains["rando"], abs=1e-6)
    assert without["train_pairs"] == 120


def test_influence_needs_held_out_pairs():
    from reward.influence import leave_one_reviewer_out

    with pytest.raises(ValueError, match="no held-out pairs"):
        leave_one_reviewer_out(np.ones((2, 3)), np.zeros((2, 3)), ["a", "b"], np.zeros((0, 3)), np.zeros((0, 3)),
                               penalty=1.0)


def test_eval_influence_is_a_run_the_agreement_page_shows_with_flags(workspace, tiny_lm, monkeypatch):
    from click.testing import CliRunner

    from rankloop.cli import main
    from reward.train import train_reward_model
    from store.agreement import set_gold
    from store.judgments import NewJudgment, add_judgment
    from store.runs import list_runs
    from store.users import add_user
    from tests.test_app_login import PAGES, app, log_in

    register_tiny(workspace.db, tiny_lm)
    ids = seed_pairs(workspace.db, n=24)
    for i in range(24):  # "contra" ranks every comparison backwards
        add_judgment(workspace.db, NewJudgment(ids(f"c{i}"), "contra", f"contra:{i}", source="import", ranking=[
            [ids(f"c{i}/c")], [ids(f"c{i}/b")], [ids(f"c{i}/a")]]))
    for i in range(6):  # gold: alice's order; contra misses every one, so contra is flagged (0 < 0.6)
        set_gold(workspace.db, ids(f"c{i}"), "test", ranking=[[ids(f"c{i}/a")], [ids(f"c{i}/b")], [ids(f"c{i}/c")]])
    model = train_reward_model(workspace, tiny_config(method="probe", probe_penalties=[0.1], probe_folds=2,
                                                      name="rm"), progress=False)
    out = CliRunner().invoke(main, ["eval", "influence", "--json", "--workspace", str(workspace.root)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["model"] == model.model_name == "rm"
    assert {r["reviewer"] for r in report["reviewers"]} == {"alice", "bob", "contra"}
    again = CliRunner().invoke(main, ["eval", "influence", "--workspace", str(workspace.root)])
    assert again.exit_code == 0 and "features reused" in again.output, again.output
    runs = list_runs(workspace.db, kind="influence")
    assert [r.status for r in runs] == ["succeeded", "succeeded"] and runs[1].metrics["features_reused"]

    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    at = log_in(app(workspace, monkeypatch), "adam", "adam's password")
    at.switch_page(str(PAGES / "agreement.py")).run()
    assert not at.exception, at.exception
    shown = next(d.value for d in at.dataframe if "gain" in d.value.columns)
    assert sorted(shown["reviewer"]) == ["alice", "bob", "contra"]
    assert dict(zip(shown["reviewer"], shown["flagged"], strict=True)) == {"alice": False, "bob": False,
                                                                           "contra": True}
    gold = next(d.value for d in at.dataframe if "gold_accuracy" in d.value.columns)
    assert dict(zip(gold["reviewer"], gold["flagged"], strict=True))["contra"]
    assert any("contra (0.00)" in w.value for w in at.warning)
