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
