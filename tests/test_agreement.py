"""Agreement figures: Krippendorff's worked example, Kendall's tau-b, and a report over real judgments."""

import pytest

from store.agreement import agreement_report, kendall_tau_b, krippendorff_alpha, pair_agreement, ranks_of
from store.judgments import NewJudgment, add_judgment
from tests.test_queue import _rows, seed_comparisons

pytestmark = pytest.mark.both_backends

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, missing data.
# Published: nominal 0.743, interval 0.849, ordinal 0.815.
_A = [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None]
_B = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3]
_C = [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None]
_D = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]
UNITS = [list(u) for u in zip(_A, _B, _C, _D, strict=True)]


@pytest.mark.parametrize("metric,published", [("nominal", 0.743), ("interval", 0.849), ("ordinal", 0.815)])
def test_krippendorff_alpha_matches_the_worked_example(metric, published):
    assert krippendorff_alpha(UNITS, metric) == pytest.approx(published, abs=0.0005)


def test_alpha_is_one_for_perfect_agreement_and_none_without_pairs():
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1, None], [2, None]]) is None


def test_kendall_tau_b():
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Pairs: (0,1) tied in x only, (0,2) concordant, (1,2) tied in y only -> 1 / sqrt(2 * 2) (scipy agrees).
    assert kendall_tau_b([1, 1, 2], [1, 2, 2]) == pytest.approx(0.5)
    assert kendall_tau_b([1, 1], [1, 2]) is None


def test_pair_agreement_counts_ties_as_a_relation():
    a, b = ranks_of([[10], [11, 12]]), ranks_of([[10], [11], [12]])
    assert pair_agreement(a, b) == (2, 3)


def test_report_over_stored_judgments(workspace):
    c1, c2 = seed_comparisons(workspace.db, 2, k=3)
    resp = {cid: ids for cid, ids in _rows(workspace.db, "SELECT id, response_ids FROM comparisons")}

    def judge(cid, who, ranking, **kw):
        add_judgment(workspace.db, NewJudgment(cid, who, f"{cid}:{who}", ranking=ranking, **kw))

    x, y, z = resp[c1]
    judge(c1, "ana", [[x], [y], [z]])
    judge(c1, "bo", [[x], [y], [z]])
    judge(c1, "cy", [[z], [y], [x]])
    p, q, r = resp[c2]
    judge(c2, "ana", [[p], [q, r]])
    judge(c2, "bo", [[p], [q], [r]])
    judge(c2, "cy", None, all_bad=True)  # not a ranking: left out
    report = agreement_report(workspace.db)
    assert report["comparisons"] == 2
    # c1: ana-bo agree on 3 pairs, ana-cy and bo-cy on 0; c2: ana-bo agree on 2 of 3.
    assert report["pairwise_agreement"] == pytest.approx(5 / 12)
    taus = {r["reviewer"]: r["tau_vs_consensus"] for r in report["reviewers"]}
    assert taus["cy"] == pytest.approx(-1.0) and taus["ana"] > 0.5
    assert report["alpha_ordinal"] is not None and report["alpha_ordinal"] < 0.5


def _three_kinds(db):
    """Round 0: c1 and c2 ranked by two people (ana, bo) and simulated reviewers, the responses scored by a reward
    model; round 1: one comparison ranked by ana alone. Returns the response ids by letter."""
    from store.models import add_model
    from store.scores import save_scores
    from tests.preferences import Seed

    seed = Seed()
    seed.comparison("c1", "First?", {"x": "x", "y": "y", "z": "z"}, round=0)
    seed.comparison("c2", "Second?", {"p": "p", "q": "q", "r": "r"}, round=0)
    seed.comparison("c3", "Third?", {"u": "u", "v": "v"}, round=1)
    ids = seed.write(db)

    def judge(key, who, order, source="app"):
        ranking = [[ids(f"{key}/{x}")] for x in order]
        add_judgment(db, NewJudgment(ids(key), who, f"{key}:{who}", ranking=ranking, source=source))

    judge("c1", "ana", "xyz"), judge("c1", "bo", "xyz"), judge("c1", "sim-1", "xzy", "simulated")
    judge("c2", "ana", "pqr"), judge("c2", "bo", "qpr"), judge("c2", "sim-1", "pqr", "simulated")
    judge("c2", "sim-2", "rqp", "simulated")
    judge("c3", "ana", "uv")
    older = add_model(db, "rm-old", "reward", path="/nowhere")
    newer = add_model(db, "rm-new", "reward", path="/nowhere")
    save_scores(db, older, {ids(f"c1/{x}"): 0.0 for x in "xyz"})  # an older model's scores are not read
    save_scores(db, newer, {ids("c1/x"): 3.0, ids("c1/y"): 2.0, ids("c1/z"): 1.0,
                            ids("c2/p"): 1.0, ids("c2/q"): 2.0, ids("c2/r"): 3.0})
    return ids


# By hand, round 0 (pair_agreement over the three response pairs of each ranking pair):
# people: c1 ana-bo 3/3, c2 ana-bo 2/3 (p,q swapped)                                   -> 5/6
# model (x>y>z, r>q>p): c1 ana 3/3, bo 3/3; c2 ana 0/3, bo 1/3 (q>p)                   -> 7/12
# simulated-people: c1 sim-1 (x>z>y) vs ana 2/3, vs bo 2/3; c2 sim-1 (p>q>r) vs ana 3/3,
#   vs bo 2/3; sim-2 (r>q>p) vs ana 0/3, vs bo 1/3                                     -> 10/18
# simulated-simulated: c2 sim-1 vs sim-2 0/3                                           -> 0
ROUND0 = {"human_human": 5 / 6, "human_human_pairs": 6, "model_human": 7 / 12, "model_human_pairs": 12,
          "simulated_human": 10 / 18, "simulated_human_pairs": 18, "simulated_simulated": 0.0,
          "simulated_simulated_pairs": 3, "reward_model": "rm-new", "multi_person_comparisons": 2}


def test_round_agreements_people_model_and_simulated(workspace):
    from store.agreement import round_agreements

    _three_kinds(workspace.db)
    rows = {r["round"]: r for r in round_agreements(workspace.db)}
    assert set(rows) == {0, 1}
    assert rows[0] == pytest.approx({"round": 0, **ROUND0})
    # round 1: one person, no scores, no simulated reviewers
    assert rows[1]["human_human"] is None and rows[1]["model_human"] is None and rows[1]["reward_model"] is None
    assert rows[1]["simulated_human"] is None and rows[1]["multi_person_comparisons"] == 0
    assert [r["round"] for r in round_agreements(workspace.db, 1)] == [1]


def test_agreement_page_shows_the_three_agreements(workspace, monkeypatch):
    from store.users import add_user
    from tests.test_app_login import PAGES, app, log_in

    _three_kinds(workspace.db)
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    at = log_in(app(workspace, monkeypatch), "adam", "adam's password")
    at.switch_page(str(PAGES / "agreement.py")).run()
    assert not at.exception, at.exception
    at.selectbox(key="agreement_round").select(0).run()
    table = next(d.value for d in at.dataframe if "model_human" in d.value.columns)
    assert list(table["round"]) == [0]
    shown = table.iloc[0].to_dict()
    for key in ("human_human", "model_human", "simulated_human", "simulated_simulated"):
        assert shown[key] == pytest.approx(ROUND0[key]), key
    assert shown["reward_model"] == "rm-new"
    assert not any("calibrated" in c.value for c in at.caption)  # no calibration yet
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    ceiling = [s for s in specs if "people vs people (ceiling)" in s]  # the chart with the people's ceiling
    assert len(ceiling) == 1 and "strokeDash" in ceiling[0]
