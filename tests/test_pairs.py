"""Preference pairs from rankings: ties, skips and "all bad", majority over reviewers, Bradley-Terry, filters."""

import math

import pandas as pd
import pytest

from store.db import read, write
from store.pairs import (
    PairFilter,
    aggregate_pairs,
    bradley_terry,
    consensus_order,
    consensus_orders,
    preference_pairs,
    ranking_pairs,
    tied_pairs,
)
from tests.preferences import Seed

pytestmark = pytest.mark.both_backends


def _letters(frame, ids, key="q"):
    """(chosen, rejected, margin) as response letters; an edited answer (chosen_id None) is "E"."""
    names = {v: k.split("/")[1] for k, v in ids.responses.items() if k.startswith(f"{key}/")}
    return sorted(("E" if pd.isna(c) else names[c], names[r], m)
                  for c, r, m in zip(frame.chosen_id, frame.rejected_id, frame.margin, strict=True))


def test_ranking_pairs_expand_groups_with_the_gap_as_margin_and_ties_give_none():
    ranking = [[1], [2, 3], [4]]
    assert ranking_pairs(ranking) == [(1, 2, 1), (1, 3, 1), (1, 4, 2), (2, 4, 1), (3, 4, 1)]
    assert tied_pairs(ranking) == 1
    assert ranking_pairs([[1, 2, 3]]) == [] and tied_pairs([[1, 2, 3]]) == 3
    assert ranking_pairs([[5], [6], [7]]) == [(5, 6, 1), (5, 7, 2), (6, 7, 1)]


def test_per_reviewer_pairs_are_exact_and_skips_all_bad_and_undone_give_none(workspace):
    seed = Seed().comparison("q", "Name a colour.", {"a": "red", "b": "blue", "c": "green", "d": "the"})
    seed.judge("q", "ana", "a>b=c>d")
    seed.judge("q", "bo", skipped=True)
    seed.judge("q", "cy", all_bad=True, edited_text="Red.")
    seed.judge("q", "dee", "d>c>b>a", all_bad=True)  # "all bad" with a ranking still gives no preference
    seed.judge("q", "eve", "d>a>b>c")
    ids = seed.write(workspace.db)
    write(workspace.db, lambda con: con.execute("UPDATE judgments SET retracted_at = now() WHERE source = 'import' "
                                                "AND reviewer_id = (SELECT id FROM reviewers WHERE name = 'eve')"))

    pairs = preference_pairs(workspace.db, PairFilter(edited_first=False))
    assert _letters(pairs, ids) == [("a", "b", 1), ("a", "c", 1), ("a", "d", 2), ("b", "d", 1), ("c", "d", 1)]
    assert set(pairs.reviewer) == {"ana"} and set(pairs.comparison_id) == {ids("q")}
    # By default cy's edit of an "all bad" beats every candidate (tests/test_edits_flags.py has more).
    edits = preference_pairs(workspace.db).query("source == 'edit'")
    assert _letters(edits, ids) == [("E", x, 1) for x in "abcd"] and set(edits.reviewer) == {"cy"}
    row = pairs[(pairs.chosen_id == ids("q/a")) & (pairs.rejected_id == ids("q/d"))].iloc[0]
    assert (row.chosen, row.rejected, row.prompt_text, row.split) == ("red", "the", "Name a colour.", "train")
    assert row.prompt_messages == [{"role": "user", "content": "Name a colour."}]
    assert row.agreement == 1.0
    # Every judgment is still recorded: nothing was dropped from the table.
    assert read(workspace.db, lambda con: con.execute("SELECT count(*) FROM judgments").fetchone()[0]) == 5


def _three_reviewers() -> Seed:
    seed = Seed().comparison("q", "Say hi.", {"a": "hi", "b": "hello", "c": "yo"})
    seed.judge("q", "r1", "a>b>c").judge("q", "r2", "a>c>b").judge("q", "r3", "b>a=c")
    seed.comparison("split", "Pick one.", {"x": "one", "y": "two"})
    seed.judge("split", "r1", "x>y").judge("split", "r2", "y>x")
    seed.comparison("tied", "Either.", {"x": "this", "y": "that"})
    seed.judge("tied", "r1", "x=y").judge("tied", "r2", "x=y")
    return seed


def test_majority_agreement_and_margin_on_a_hand_made_case(workspace):
    ids = _three_reviewers().write(workspace.db)
    agg = aggregate_pairs(workspace.db)
    assert set(agg.comparison_id) == {ids("q")}  # an exact split and an all-tie give no pair
    got = {(r.chosen_id, r.rejected_id): (round(r.agreement, 6), r.margin, r.n_reviewers) for r in agg.itertuples()}
    # (a,b): r1 a>b gap 1, r2 a>b gap 2, r3 b>a; (a,c): r1 gap 2, r2 gap 1, r3 tie; (b,c): r1 b>c, r2 c>b, r3 b>c.
    assert got == {
        (ids("q/a"), ids("q/b")): (0.666667, 1.5, 3),
        (ids("q/a"), ids("q/c")): (0.666667, 1.5, 3),
        (ids("q/b"), ids("q/c")): (0.666667, 1.0, 3),
    }
    assert list(agg.reviewers.iloc[0]) == ["r1", "r2", "r3"] and len(agg.judgment_ids.iloc[0]) == 3
    assert aggregate_pairs(workspace.db, PairFilter(min_agreement=0.7)).empty
    assert len(aggregate_pairs(workspace.db, PairFilter(min_agreement=0.6))) == 3

    per = preference_pairs(workspace.db)
    r3 = per[(per.reviewer == "r3") & (per.comparison_id == ids("q"))]
    assert _letters(r3, ids) == [("b", "a", 1), ("b", "c", 1)]
    assert sorted(r3.agreement) == pytest.approx([1 / 3, 2 / 3])
    split = per[per.comparison_id == ids("split")]
    assert list(split.agreement) == [0.5, 0.5]
    assert len(preference_pairs(workspace.db, PairFilter(min_agreement=0.6))) == 6  # r1 3, r2 2, r3 1 (b>c)
    assert per[per.comparison_id == ids("tied")].empty


def test_bradley_terry_two_items_has_the_closed_form():
    scores = bradley_terry([0, 1], {(0, 1): 3.0, (1, 0): 1.0}, prior=0.1)
    assert scores[0] - scores[1] == pytest.approx(math.log(3.1 / 1.1), abs=1e-8)
    assert scores[0] + scores[1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="prior"):
        bradley_terry([0, 1], {}, prior=0)


def test_consensus_order_over_reviewers(workspace):
    seed = Seed().comparison("q", "Rank these.", {"a": "A", "b": "B", "c": "C", "d": "D"})
    seed.judge("q", "r1", "a>b>c>d").judge("q", "r2", "a>b>d>c").judge("q", "r3", "b>a>c=d")
    seed.judge("q", "r4", skipped=True).judge("q", "r5", "d>c>b>a", all_bad=True)
    seed.comparison("sep", "Separate.", {"x": "X", "y": "Y", "z": "Z"}).judge("sep", "r1", "x>y>z")
    seed.comparison("none", "Nobody ranked.", {"x": "X", "y": "Y"}).judge("none", "r1", skipped=True)
    ids = seed.write(workspace.db)

    order = consensus_order(workspace.db, ids("q"))
    assert order.n_judgments == 3
    assert order.order == [ids("q/a"), ids("q/b"), ids("q/c"), ids("q/d")]
    assert sum(order.scores.values()) == pytest.approx(0.0, abs=1e-9)
    # The fit is the maximum of the smoothed likelihood: expected wins equal observed wins for every response.
    p = {r: math.exp(s) for r, s in order.scores.items()}
    wins = {"a": 8 + 0.3, "b": 7 + 0.3, "c": 1.5 + 0.3, "d": 1.5 + 0.3}  # a tie is half a win each way; prior 0.1
    for name, observed in wins.items():
        i = ids(f"q/{name}")
        expected = sum((3 + 0.2) * p[i] / (p[i] + p[j]) for j in p if j != i)
        assert expected == pytest.approx(observed, abs=1e-6)

    sep = consensus_order(workspace.db, ids("sep"))  # perfect separation still converges to finite scores
    assert sep.order == [ids("sep/x"), ids("sep/y"), ids("sep/z")]
    assert all(math.isfinite(s) for s in sep.scores.values())
    assert consensus_order(workspace.db, ids("none")) is None
    assert set(consensus_orders(workspace.db)) == {ids("q"), ids("sep")}
    assert set(consensus_orders(workspace.db, PairFilter(reviewer="r3"))) == {ids("q")}


def test_filters_round_split_reviewer_and_model(workspace):
    seed = Seed()
    seed.comparison("r0", "Round zero.", {"a": "A0", "b": "B0"}, models={"a": "policy-v1", "b": "policy-v0"})
    seed.comparison("r1", "Round one.", {"a": "A1", "b": "B1"}, models={"a": "policy-v2", "b": "policy-v1"},
                    round=1)
    seed.comparison("ev", "Held out.", {"a": "AE", "b": "BE"}, models={"a": "policy-v2", "b": "policy-v2"},
                    round=1, split="eval")
    for key in ("r0", "r1", "ev"):
        seed.judge(key, "ana", "a>b").judge(key, "bo", "b>a")
    seed.write(workspace.db)

    def chosen(**kw):
        return sorted(preference_pairs(workspace.db, PairFilter(**kw)).chosen)

    assert chosen() == ["A0", "A1", "AE", "B0", "B1", "BE"]
    assert chosen(round=1) == ["A1", "AE", "B1", "BE"]
    assert chosen(round=[0, 1], split="train") == ["A0", "A1", "B0", "B1"]
    assert chosen(reviewer="ana") == ["A0", "A1", "AE"]
    assert chosen(reviewer=["ana", "bo"], split="eval") == ["AE", "BE"]
    assert chosen(model="policy-v1") == ["A0", "A1", "B0", "B1"]  # either side written by it
    assert chosen(model="policy-v0", reviewer="bo") == ["B0"]
    assert chosen(model="nobody") == []
    assert aggregate_pairs(workspace.db, PairFilter(reviewer="ana")).chosen.tolist() == ["A0", "A1", "AE"]


@pytest.mark.parametrize("kw,message", [
    ({"min_agreement": 1.5}, "between 0 and 1"), ({"min_agreement": "high"}, "expected a number"),
    ({"round": -1}, ">= 0"), ({"round": "1"}, "expected an int"), ({"reviewer": ""}, "non-empty str"),
    ({"model": ["ok", 3]}, "non-empty str"), ({"split": [True]}, "non-empty str"),
    ({"edited_first": "yes"}, "edited_first: expected True or False"),
    ({"exclude_flagged": 1}, "exclude_flagged: expected True or False"),
])
def test_pair_filter_validates(kw, message):
    with pytest.raises(ValueError, match=message):
        PairFilter(**kw)


def test_a_prompt_without_original_text_keeps_none_and_its_messages(workspace):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = Seed().comparison("q", chat, {"a": "Hello.", "b": "Hm."}).judge("q", "ana", "a>b").write(workspace.db)
    for frame in (preference_pairs(workspace.db), aggregate_pairs(workspace.db)):
        row = frame.to_dict("records")[0]
        assert row["prompt_text"] is None and row["prompt_messages"] == chat
        assert (row["chosen_id"], row["rejected_id"], row["chosen"]) == (ids("q/a"), ids("q/b"), "Hello.")
