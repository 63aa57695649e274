"""How much reviewers agree: pairwise agreement, Krippendorff's alpha, Kendall's tau against the consensus, gold.

Only counted judgments with a ranking take part (not undone, not skipped, not "all bad"). A ranking becomes a
rank per response: its group's position, best = 1, tied responses share a rank.

- Pairwise agreement: over every comparison, pair of its reviewers and pair of its responses, the share where
  both reviewers order the two responses the same way (better, worse or tied).
- Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"): units are
  (comparison, response), values the ranks, coders the reviewers; ordinal metric by default.
- Kendall's tau-b of each reviewer against the consensus of the others on the same comparison (mean rank by the
  other reviewers, leave-one-out), averaged over comparisons.
- Gold accuracy: per reviewer, the mean pairwise agreement with the gold answer (an "all bad" gold needs "all bad").
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import duckdb

from store.audit import log_event
from store.db import read, write
from store.judgments import check_ranking, counted

Ranks = dict[int, int]  # response id -> rank (1 = best)


def ranks_of(ranking: list[list[int]]) -> Ranks:
    return {rid: pos for pos, group in enumerate(ranking, start=1) for rid in group}


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pair_agreement(a: Ranks, b: Ranks) -> tuple[int, int]:
    """(agreeing pairs, pairs) over the responses both rank."""
    ids = sorted(set(a) & set(b))
    pairs = list(combinations(ids, 2))
    same = sum(_sign(a[x] - a[y]) == _sign(b[x] - b[y]) for x, y in pairs)
    return same, len(pairs)


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (ties handled); None when either side is all tied or has fewer than two items."""
    conc = disc = tx = ty = 0
    for i, j in combinations(range(len(x)), 2):
        sx, sy = _sign(x[i] - x[j]), _sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            conc += 1
        else:
            disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return None if denom == 0 else (conc - disc) / denom


def krippendorff_alpha(units: list[list[float | None]], metric: str = "ordinal") -> float | None:
    """Alpha over `units` (each a list of values, one per coder, None when missing); metric ordinal/interval/nominal.

    None when no unit has two values or there is no variation at all.
    """
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    values = sorted({v for u in pairable for v in u})
    if not values:
        return None
    index = {v: i for i, v in enumerate(values)}
    k = len(values)
    o = [[0.0] * k for _ in range(k)]  # coincidence matrix, o[c][k]
    for u in pairable:
        m = len(u)
        for i, vi in enumerate(u):
            for j, vj in enumerate(u):
                if i != j:
                    o[index[vi]][index[vj]] += 1.0 / (m - 1)
    n_c = [sum(row) for row in o]
    n = sum(n_c)

    def delta2(c: int, d: int) -> float:
        if metric == "nominal":
            return 0.0 if c == d else 1.0
        if metric == "interval":
            return (values[c] - values[d]) ** 2
        if metric == "ordinal":
            lo, hi = min(c, d), max(c, d)
            return (sum(n_c[lo:hi + 1]) - (n_c[lo] + n_c[hi]) / 2) ** 2
        raise ValueError(f"metric must be ordinal, interval or nominal, got {metric!r}")

    d_o = sum(o[c][d] * delta2(c, d) for c in range(k) for d in range(k))
    d_e = sum(n_c[c] * n_c[d] * delta2(c, d) for c in range(k) for d in range(k))
    if d_e == 0:
        return None
    return 1.0 - (n - 1) * d_o / d_e


def _rankings(con: duckdb.DuckDBPyConnection, round: int | None) -> dict[int, dict[str, Ranks]]:
    rows = con.execute(
        "SELECT j.comparison_id, r.name, j.ranking FROM judgments j JOIN reviewers r ON r.id = j.reviewer_id "
        f"JOIN comparisons c ON c.id = j.comparison_id WHERE {counted('j')} AND j.ranking IS NOT NULL "
        "AND NOT j.all_bad AND (CAST(? AS INTEGER) IS NULL OR c.round = ?) ORDER BY j.id",
        [round, round],
    ).fetchall()
    out: dict[int, dict[str, Ranks]] = defaultdict(dict)
    for cid, name, ranking in rows:
        out[cid][name] = ranks_of(json.loads(ranking))
    return out


def agreement_report(db: str | Path, round: int | None = None) -> dict[str, Any]:
    """Agreement figures over comparisons with two or more reviewers (all rounds, or one)."""
    by_comparison = {c: r for c, r in read(db, lambda con: _rankings(con, round)).items() if len(r) >= 2}
    same = total = 0
    units: list[list[float | None]] = []
    reviewers = sorted({name for r in by_comparison.values() for name in r})
    per: dict[str, dict[str, Any]] = {n: {"taus": [], "same": 0, "pairs": 0} for n in reviewers}
    for ranks in by_comparison.values():
        for a, b in combinations(sorted(ranks), 2):
            s, t = pair_agreement(ranks[a], ranks[b])
            same, total = same + s, total + t
            for name in (a, b):
                per[name]["same"] += s
                per[name]["pairs"] += t
        for rid in sorted({rid for r in ranks.values() for rid in r}):
            units.append([ranks[n].get(rid) if n in ranks else None for n in reviewers])
        for name, mine in ranks.items():
            others = [r for n, r in ranks.items() if n != name]
            ids = sorted(mine)
            consensus = [sum(r.get(i, len(ids)) for r in others) / len(others) for i in ids]
            tau = kendall_tau_b([mine[i] for i in ids], consensus)
            if tau is not None:
                per[name]["taus"].append(tau)
    return {
        "comparisons": len(by_comparison),
        "pairwise_agreement": same / total if total else None,
        "pairs": total,
        "alpha_ordinal": krippendorff_alpha(units, "ordinal"),
        "reviewers": [
            {
                "reviewer": n,
                "comparisons": sum(n in r for r in by_comparison.values()),
                "tau_vs_consensus": sum(p["taus"]) / len(p["taus"]) if p["taus"] else None,
                "agreement": p["same"] / p["pairs"] if p["pairs"] else None,
            }
            for n, p in per.items()
        ],
    }


def set_gold(db: str | Path, comparison_id: int, actor: str, ranking: list[list[int]] | None = None,
             all_bad: bool = False, note: str | None = None) -> None:
    """Make a comparison a gold question with a known answer (replacing an earlier answer)."""

    def work(con: duckdb.DuckDBPyConnection) -> None:
        row = con.execute("SELECT response_ids FROM comparisons WHERE id = ?", [comparison_id]).fetchone()
        if row is None:
            raise ValueError(f"no comparison with id {comparison_id}")
        check_ranking(ranking, list(row[0]), all_bad=all_bad, skipped=False)
        con.execute(
            "INSERT INTO gold_answers (comparison_id, ranking, all_bad, note, created_by) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (comparison_id) DO UPDATE SET ranking = excluded.ranking, all_bad = excluded.all_bad, "
            "note = excluded.note, created_by = excluded.created_by",
            [comparison_id, None if ranking is None else json.dumps(ranking), all_bad, note, actor],
        )
        log_event(con, actor, "gold.set", {"comparison_id": comparison_id, "ranking": ranking, "all_bad": all_bad})

    write(db, work)


def remove_gold(db: str | Path, comparison_id: int, actor: str) -> None:
    def work(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("DELETE FROM gold_answers WHERE comparison_id = ?", [comparison_id])
        log_event(con, actor, "gold.remove", {"comparison_id": comparison_id})

    write(db, work)


def list_gold(db: str | Path) -> list[dict[str, Any]]:
    rows = read(db, lambda con: con.execute(
        "SELECT comparison_id, ranking, all_bad, note, created_by, created_at FROM gold_answers "
        "ORDER BY comparison_id").fetchall())
    cols = ("comparison_id", "ranking", "all_bad", "note", "created_by", "created_at")
    return [dict(zip(cols, r, strict=True)) for r in rows]


def gold_accuracy(db: str | Path) -> dict[str, dict[str, float]]:
    """Per reviewer name: gold items answered and mean agreement with the gold answers (0..1)."""
    rows = read(db, lambda con: con.execute(
        "SELECT r.name, j.ranking, j.all_bad, g.ranking, g.all_bad FROM judgments j "
        "JOIN gold_answers g ON g.comparison_id = j.comparison_id JOIN reviewers r ON r.id = j.reviewer_id "
        f"WHERE {counted('j')} ORDER BY j.id").fetchall())
    scores: dict[str, list[float]] = defaultdict(list)
    for name, ranking, all_bad, gold_ranking, gold_all_bad in rows:
        if gold_all_bad or all_bad or not ranking or not gold_ranking:
            scores[name].append(float(bool(gold_all_bad) == bool(all_bad)))
            continue
        s, t = pair_agreement(ranks_of(json.loads(ranking)), ranks_of(json.loads(gold_ranking)))
        scores[name].append(s / t if t else 1.0)
    return {n: {"gold_items": len(v), "gold_accuracy": sum(v) / len(v)} for n, v in scores.items()}


# --- per round: humans against each other, the reward model and simulated reviewers ------------------------------

# Counted rankings with the round and the reviewer's kind ('simulated' or a person: 'human', 'import').
_ROUND_RANKINGS = (
    "SELECT c.round, j.comparison_id, r.name, r.kind, j.ranking FROM judgments j "
    "JOIN reviewers r ON r.id = j.reviewer_id JOIN comparisons c ON c.id = j.comparison_id "
    f"WHERE {counted('j')} AND j.ranking IS NOT NULL AND NOT j.all_bad "
    "AND (CAST(? AS INTEGER) IS NULL OR c.round = ?) ORDER BY j.id")

# Per round, the newest reward model (highest model id) with stored scores for the round's responses, and those
# scores. Parameters: round, round.
_ROUND_SCORES = """
    WITH sc AS (
        SELECT c.round, s.model_id, s.response_id, s.score FROM comparisons c
        JOIN response_scores s ON s.response_id = ANY(c.response_ids)
        JOIN models m ON m.id = s.model_id
        WHERE m.kind = 'reward' AND (CAST(? AS INTEGER) IS NULL OR c.round = ?)),
    newest AS (SELECT round, max(model_id) AS model_id FROM sc GROUP BY round)
    SELECT DISTINCT sc.round, sc.model_id, m.name, sc.response_id, sc.score FROM sc
    JOIN newest n ON n.round = sc.round AND n.model_id = sc.model_id JOIN models m ON m.id = sc.model_id
    ORDER BY sc.round, sc.response_id"""


def _agree(pairs: list[tuple[Ranks, Ranks]]) -> tuple[float | None, int]:
    same = total = 0
    for a, b in pairs:
        s, t = pair_agreement(a, b)
        same, total = same + s, total + t
    return (same / total if total else None), total


def round_agreements(db: str | Path, round: int | None = None) -> list[dict[str, Any]]:
    """Per round (one, or every round with rankings): pairwise agreement (`pair_agreement`: ties count as a relation)

    - `human_human`: between two people on the same comparison (comparisons two or more people ranked): the ceiling
      a reward model's agreement with people can reach;
    - `model_human`: the newest reward model with stored scores for the round's responses (`rankloop score`), its
      scores read as a ranking (higher is better, equal scores tie), against each person's ranking of the round;
    - `simulated_human`: a simulated reviewer (kind 'simulated') against a person on the same comparison;
    - `simulated_simulated`: two simulated reviewers on the same comparison.

    Each with the number of response pairs it counts (`*_pairs`); None where there is nothing to compare. People
    are every reviewer that is not simulated (app accounts and imported reviewers)."""

    def work(con: duckdb.DuckDBPyConnection) -> tuple[list, list]:
        return (con.execute(_ROUND_RANKINGS, [round, round]).fetchall(),
                con.execute(_ROUND_SCORES, [round, round]).fetchall())

    ranking_rows, score_rows = read(db, work)
    people: dict[int, dict[int, dict[str, Ranks]]] = defaultdict(lambda: defaultdict(dict))  # round -> cid -> name
    sims: dict[int, dict[int, dict[str, Ranks]]] = defaultdict(lambda: defaultdict(dict))
    for rnd, cid, name, kind, ranking in ranking_rows:
        (sims if kind == "simulated" else people)[int(rnd)][int(cid)][name] = ranks_of(json.loads(ranking))
    model: dict[int, tuple[int, str]] = {}
    scores: dict[int, dict[int, float]] = defaultdict(dict)
    for rnd, model_id, name, rid, score in score_rows:
        model[int(rnd)] = (int(model_id), name)
        scores[int(rnd)][int(rid)] = -float(score)  # as a rank: lower is better
    out = []
    for rnd in sorted(set(people) | set(sims)):
        mine, theirs = people.get(rnd, {}), sims.get(rnd, {})
        hh = [(r[a], r[b]) for r in mine.values() for a, b in combinations(sorted(r), 2)]
        ss = [(r[a], r[b]) for r in theirs.values() for a, b in combinations(sorted(r), 2)]
        sh = [(s, p) for cid, r in theirs.items() for s in r.values() for p in mine.get(cid, {}).values()]
        model_ranks = scores.get(rnd, {})
        mh = [({i: model_ranks[i] for i in p if i in model_ranks}, p) for r in mine.values() for p in r.values()]
        row: dict[str, Any] = {"round": rnd,
                               "multi_person_comparisons": sum(len(r) >= 2 for r in mine.values()),
                               "reward_model": model[rnd][1] if rnd in model else None}
        for key, pairs in (("human_human", hh), ("model_human", mh), ("simulated_human", sh),
                           ("simulated_simulated", ss)):
            row[key], row[f"{key}_pairs"] = _agree(pairs)
        out.append(row)
    return out


INFLUENCE_KIND = "influence"  # run rows of `rankloop eval influence` (reward/influence.py)
INFLUENCE_FILE = "influence.json"


def latest_influence(db: str | Path) -> dict[str, Any] | None:
    """The newest succeeded influence run's report (its run folder's influence.json) with its run id, or None."""
    from store.runs import list_runs

    for run in reversed(list_runs(db, kind=INFLUENCE_KIND)):
        path = Path(run.output_path or "", INFLUENCE_FILE)
        if run.status == "succeeded" and run.output_path and path.is_file():
            return {"run_id": run.id, "finished_at": run.finished_at, **json.loads(path.read_text(encoding="utf-8"))}
    return None
