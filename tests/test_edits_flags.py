"""Issue 17: an edited answer ranks above every candidate of its comparison (pairs, KTO rows, exports, the DPO
dataset, snapshots), on by default and off with edited_first=False; "all bad" gives KTO negatives; reviewers whose
gold accuracy is under the workspace threshold are flagged and, with exclude_flagged, left out and named."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from rankloop.commands.export import export_group
from reward.config import RewardConfigError, RewardTrainingConfig
from store.agreement import set_gold
from store.export import export
from store.labels import kto_records, sft_records
from store.pairs import PairFilter, aggregate_pairs, preference_pairs, read_scoped
from store.reviewer_flags import MIN_GOLD_ITEMS, flagged_reviewers
from store.settings import get_settings, set_setting
from tests.preferences import Seed
from training.config import dataclass_from_dict
from training.snapshot import digest, save_rows, saved_rows, take_snapshot

pytestmark = pytest.mark.both_backends


def _edited(workspace):
    seed = Seed().comparison("q", "Name a colour.", {"a": "red", "b": "blue", "c": "green"})
    seed.judge("q", "ana", "a>b>c", edited_text="Red, like a rose.")
    seed.judge("q", "bo", all_bad=True, edited_text="Scarlet.")
    seed.judge("q", "cy", "b>a=c", edited_text="Red, like a rose.")
    seed.judge("q", "dee", all_bad=True)  # no edit: KTO negatives only, no pair
    seed.judge("q", "eve", "c>b>a", edited_text="   ")  # a blank edit is no edit
    seed.judge("q", "fay", "a>b>c", edited_text="green")  # an edit that is a candidate's text: no pair with it
    seed.comparison("r", "Say hi.", {"x": "hi", "y": "yo"}).judge("r", "ana", "x>y")
    return seed.write(workspace.db)


def _named(frame, ids):
    names = {v: k.split("/")[1] for k, v in ids.responses.items()}
    return sorted((r.get("reviewer", ""), r["chosen"] if pd.isna(r["chosen_id"]) else names[r["chosen_id"]],
                   names[r["rejected_id"]], r["margin"]) for r in frame.to_dict("records"))


def test_edits_outrank_every_candidate_per_reviewer_and_aggregated(workspace):
    ids = _edited(workspace)
    per = preference_pairs(workspace.db)
    edits = per[per.source == "edit"]
    assert edits.chosen_id.isna().all() and not per[per.source == "ranking"].chosen_id.isna().any()
    assert _named(edits, ids) == sorted([
        ("ana", "Red, like a rose.", "a", 1), ("ana", "Red, like a rose.", "b", 2),
        ("ana", "Red, like a rose.", "c", 3),  # 1 + the candidate's group in ana's ranking
        ("bo", "Scarlet.", "a", 1), ("bo", "Scarlet.", "b", 1), ("bo", "Scarlet.", "c", 1),  # "all bad" + edit
        ("cy", "Red, like a rose.", "b", 1), ("cy", "Red, like a rose.", "a", 2), ("cy", "Red, like a rose.", "c", 2),
        ("fay", "green", "a", 1), ("fay", "green", "b", 2),  # not over "green" itself
    ])
    assert set(edits.agreement) == {1.0} and set(per.source) == {"ranking", "edit"}

    agg = aggregate_pairs(workspace.db)
    got = {(r["chosen"], names_of(ids)[r["rejected_id"]]): (r["margin"], r["n_reviewers"], r["reviewers"])
           for r in agg[agg.source == "edit"].to_dict("records")}
    assert got == {  # each distinct edit once per comparison and candidate, margin the mean over its authors
        ("Red, like a rose.", "a"): (1.5, 2, ["ana", "cy"]), ("Red, like a rose.", "b"): (1.5, 2, ["ana", "cy"]),
        ("Red, like a rose.", "c"): (2.5, 2, ["ana", "cy"]),
        ("Scarlet.", "a"): (1.0, 1, ["bo"]), ("Scarlet.", "b"): (1.0, 1, ["bo"]), ("Scarlet.", "c"): (1.0, 1, ["bo"]),
        ("green", "a"): (1.0, 1, ["fay"]), ("green", "b"): (2.0, 1, ["fay"]),
    }
    assert agg[agg.source == "edit"].chosen_id.isna().all()

    off = PairFilter(edited_first=False)
    assert set(preference_pairs(workspace.db, off).source) == {"ranking"}
    assert set(aggregate_pairs(workspace.db, off).source) == {"ranking"}
    assert len(preference_pairs(workspace.db, off)) == len(per) - len(edits)
    assert off.as_dict()["edited_first"] is False and PairFilter().as_dict()["edited_first"] is True


def names_of(ids):
    return {v: k.split("/")[1] for k, v in ids.responses.items()}


def test_edit_rows_reach_the_export_file_and_the_dpo_dataset(workspace, tmp_path):
    _edited(workspace)
    m = export(workspace.db, "pairs", tmp_path / "p.jsonl", with_meta=True)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {"prompt": "Name a colour.", "chosen": "Scarlet.", "rejected": "blue", "margin": 1.0, "reviewer": "bo",
            "comparison_id": rows[0]["comparison_id"], "judgment_id": 2, "round": 0, "origin": "edit"} in rows
    assert m["counts"]["by_source"] == {"edit": 11, "ranking": 12}
    assert m["counts"]["left_out"]["all_bad_judgments"] == 1  # dee's; bo's "all bad" gave its edit's pairs
    assert m["counts"]["left_out"]["edit_same_as_candidate"] == 1
    agg = export(workspace.db, "pairs", tmp_path / "a.jsonl", aggregate=True, with_meta=True)
    assert agg["counts"]["by_source"]["edit"] == 8
    off = export(workspace.db, "pairs", tmp_path / "off.jsonl", filters=PairFilter(edited_first=False))
    assert off["counts"]["by_source"] == {"ranking": 12} and off["filters"]["edited_first"] is False
    assert off["counts"]["left_out"]["all_bad_judgments"] == 2

    from rl.dpo import pairs_dataset

    dataset = pairs_dataset(preference_pairs(workspace.db))
    scarlet = [r for r in dataset if r["chosen"] == [{"role": "assistant", "content": "Scarlet."}]]
    assert len(scarlet) == 3 and {r["rejected"][0]["content"] for r in scarlet} == {"red", "blue", "green"}
    assert scarlet[0]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert len(pairs_dataset(preference_pairs(workspace.db, PairFilter(edited_first=False)))) == 12


def test_all_bad_gives_kto_negatives_and_an_edit_is_desirable(workspace):
    _edited(workspace)
    f = PairFilter()
    records, _ = kto_records(read_scoped(workspace.db, f), f, aggregate=False)
    by = {}
    for r in records:
        by.setdefault(r["reviewer"], set()).add((r["completion"], r["label"], r["source"]))
    assert by["dee"] == {("red", False, "response"), ("blue", False, "response"), ("green", False, "response")}
    assert by["bo"] == {("red", False, "response"), ("blue", False, "response"), ("green", False, "response"),
                        ("Scarlet.", True, "edit")}
    assert ("Red, like a rose.", True, "edit") in by["ana"] and not any(s == "edit" for *_, s in by["eve"])
    assert not any(s == "edit" for *_, s in by["fay"])  # its edit is a candidate's text
    assert all(r["response_id"] is None for r in records if r["source"] == "edit")
    agg, _ = kto_records(read_scoped(workspace.db, f), f, aggregate=True)
    assert sorted(r["completion"] for r in agg if r["source"] == "edit") == ["Red, like a rose.", "Scarlet."]
    off = PairFilter(edited_first=False)
    records, _ = kto_records(read_scoped(workspace.db, off), off, aggregate=False)
    assert {r["source"] for r in records} == {"response"}


def test_a_snapshot_with_edit_pairs_records_the_setting_and_reads_back(workspace, tmp_path):
    _edited(workspace)
    frame, snap = take_snapshot(workspace.db, RewardTrainingConfig())
    assert snap["filters"]["edited_first"] is True and snap["filters"]["exclude_flagged"] is False
    assert (frame.source == "edit").sum() == 11 and frame.chosen_id.isna().sum() == 11
    saved = save_rows(tmp_path, frame, snap)
    again = saved_rows(tmp_path, saved)  # the parquet round trip keeps the None ids and the hash
    assert digest(again) == snap["sha256"] and again.chosen_id.isna().sum() == 11
    off, off_snap = take_snapshot(workspace.db, RewardTrainingConfig(edited_first=False))
    assert len(off) == len(frame) - 11 and off_snap["filters"]["edited_first"] is False
    assert off_snap["sha256"] != snap["sha256"]


def _gold_and_reviewers(workspace):
    seed = Seed()
    for i in range(MIN_GOLD_ITEMS + 1):
        seed.comparison(f"g{i}", f"Gold {i}.", {"x": f"right {i}", "y": f"wrong {i}"})
        seed.judge(f"g{i}", "good", "x>y").judge(f"g{i}", "bad", "y>x")
        if i < 2:
            seed.judge(f"g{i}", "new", "y>x")  # two misses: too few gold items to flag
    seed.comparison("q", "Pick.", {"a": "A", "b": "B"})
    seed.judge("q", "good", "a>b").judge("q", "bad", "b>a", edited_text="Better.").judge("q", "new", "a>b")
    ids = seed.write(workspace.db)
    for i in range(MIN_GOLD_ITEMS + 1):
        set_gold(workspace.db, ids(f"g{i}"), "admin", [[ids(f"g{i}/x")], [ids(f"g{i}/y")]])
    return ids


def test_flagged_reviewers_are_left_out_with_exclude_flagged_and_named(workspace, tmp_path):
    _gold_and_reviewers(workspace)
    assert get_settings(workspace.db)["reviewer_flag_below"] == 0.6
    assert flagged_reviewers(workspace.db) == {"bad": 0.0}

    assert set(preference_pairs(workspace.db).reviewer) == {"good", "bad", "new"}  # off by default
    f = PairFilter(exclude_flagged=True)
    assert set(preference_pairs(workspace.db, f).reviewer) == {"good", "new"}
    assert f.as_dict()["excluded_reviewers"] == {"bad": 0.0}
    # Without bad's votes, g0 and g1 split between good and new: no majority pair.
    assert set(aggregate_pairs(workspace.db, f).chosen) == {"A"} | {f"right {i}" for i in range(2, MIN_GOLD_ITEMS + 1)}
    fb = read_scoped(workspace.db, f)
    for records, _ in (kto_records(fb, f, False), sft_records(fb, f, False)):
        assert records and "bad" not in {r["reviewer"] for r in records}

    m = export(workspace.db, "kto", tmp_path / "k.jsonl", filters=PairFilter(exclude_flagged=True))
    assert m["filters"]["excluded_reviewers"] == {"bad": 0.0}
    assert m["counts"]["left_out"]["flagged_reviewer_judgments"] == MIN_GOLD_ITEMS + 2
    res = CliRunner().invoke(export_group, ["pairs", "-w", str(workspace.root), "--out", str(tmp_path / "p.jsonl"),
                                            "--exclude-flagged", "--with-meta"])
    assert res.exit_code == 0, res.output
    assert "flagged reviewers left out: bad" in res.output
    assert "bad" not in {json.loads(line)["reviewer"] for line in (tmp_path / "p.jsonl").read_text().splitlines()}

    frame, snap = take_snapshot(workspace.db, RewardTrainingConfig(exclude_flagged=True))
    assert "bad" not in set(frame.reviewer) and snap["excluded_reviewers"] == {"bad": 0.0}
    assert snap["filters"]["exclude_flagged"] is True
    kto, kto_snap = take_snapshot(workspace.db, RewardTrainingConfig(exclude_flagged=True), "kto")
    assert "bad" not in set(kto.reviewer) and kto_snap["filters"]["excluded_reviewers"] == {"bad": 0.0}

    set_setting(workspace.db, "reviewer_flag_below", None, actor="admin")  # None and 0 turn flagging off
    assert get_settings(workspace.db)["reviewer_flag_below"] == 0.0 and flagged_reviewers(workspace.db) == {}
    assert set(preference_pairs(workspace.db, PairFilter(exclude_flagged=True)).reviewer) == {"good", "bad", "new"}
    set_setting(workspace.db, "reviewer_flag_below", 1, actor="admin")  # 1.0: under perfect; "new" has 2 items
    assert flagged_reviewers(workspace.db) == {"bad": 0.0}


@pytest.mark.parametrize("value,message", [
    (1.5, "setting reviewer_flag_below: must be <= 1.0, got 1.5"),
    (-0.1, "setting reviewer_flag_below: must be >= 0.0"),
    ("high", "setting reviewer_flag_below: expected float, got str"),
    (True, "setting reviewer_flag_below: expected float, got bool"),
])
def test_bad_flag_thresholds_are_refused_and_nothing_is_stored(workspace, value, message):
    with pytest.raises(ValueError, match=message):
        set_setting(workspace.db, "reviewer_flag_below", value, actor="admin")
    assert get_settings(workspace.db)["reviewer_flag_below"] == 0.6


def test_bad_selection_values_name_the_field(workspace):
    with pytest.raises(RewardConfigError, match=r"rankloop.toml: \[reward\] exclude_flagged: expected bool"):
        dataclass_from_dict(RewardTrainingConfig, {"exclude_flagged": "yes"}, None, "rankloop.toml: [reward] ",
                            RewardConfigError)
    with pytest.raises(ValueError, match="filters: edited_first: expected True or False, got 'no'"):
        take_snapshot(workspace.db, RewardTrainingConfig(edited_first="no"))
    res = CliRunner().invoke(export_group, ["pairs", "-w", str(workspace.root), "--out", "x.jsonl",
                                            "--edited-first=maybe"])
    assert res.exit_code == 2
