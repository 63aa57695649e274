"""Preference pairs from rankings: per reviewer, aggregated over reviewers, and a Bradley-Terry consensus order.

- A ranking (groups of response ids, best first; a group of 2+ is a tie) expands to (better, worse, margin) for
  every two responses in different groups, margin = how many groups apart they are. Tied responses give no pair.
- Only judgments that count give pairs (`store.feedback.Judged.use`): never skips, "all bad" or undone ones.
- Edited answers (`PairFilter.edited_first`, on by default): a counted judgment with a non-blank edited answer
  ranks the edit above every candidate of its comparison, "all bad" judgments included (an "all bad" without an
  edit gives no pair). An edit pair has `chosen_id` None (the edit is no response row), `source` "edit" (else
  "ranking"), margin 1 + the candidate's group in the judgment's ranking (1 for an "all bad"), agreement 1.0 (only
  its authors saw the edit). Aggregated: each distinct edit once per comparison over every candidate, its margin
  the mean over the judgments that gave it. A candidate whose text is the edit's gives no pair with it.
- Flagged reviewers (`PairFilter.exclude_flagged`, off by default): `read_scoped` leaves out the judgments of the
  reviewers `store.reviewer_flags.flagged_reviewers` flags at read time, and records them on the filter
  (`excluded_reviewers`, also in `as_dict`).
- Aggregated: per comparison and response pair, each counted ranking of both is one vote (better, worse or tie).
  The majority direction wins when it has strictly more votes than the other direction; `agreement` is its share
  of all votes (ties count against it); an exact split (or all ties) gives no pair. Margin = the mean rank gap
  among the majority.
- Consensus order: a Bradley-Terry fit (Hunter 2004, MM updates) over all reviewers' pairwise outcomes of one
  comparison, a tie counting half a win each way, with `prior` pseudo-wins each way for every pair so the fit
  converges even when one response beats all others.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from store.feedback import ComparisonInfo, Feedback, Judged, read_feedback, without_reviewers

Pair = tuple[int, int, int]  # (better id, worse id, margin in groups)


def ranking_pairs(ranking: list[list[int]]) -> list[Pair]:
    """(better, worse, group gap) for every two responses in different groups; tied responses give none."""
    return [
        (better, worse, j - i)
        for i, upper in enumerate(ranking)
        for j in range(i + 1, len(ranking))
        for better in upper
        for worse in ranking[j]
    ]


def tied_pairs(ranking: list[list[int]]) -> int:
    """How many response pairs the ranking ties (and so gives no preference for)."""
    return sum(len(g) * (len(g) - 1) // 2 for g in ranking)


def _tuple(value: Any, kind: type, name: str) -> tuple:
    if value is None:
        return ()
    values = (value,) if isinstance(value, kind) else tuple(value)
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool) or (kind is str and not v.strip()):
            raise ValueError(f"{name}: expected {'a non-empty ' if kind is str else 'an '}{kind.__name__}, got {v!r}")
    return values


@dataclass
class PairFilter:
    """Which judgments and pairs to use. Each field may be one value or several (any of them matches)."""

    round: int | Sequence[int] | None = None  # comparisons of these rounds
    model: str | Sequence[str] | None = None  # a pair (row) qualifies if either side was written by the model
    reviewer: str | Sequence[str] | None = None  # only these reviewers' judgments
    min_agreement: float | None = None  # share of reviewers agreeing with the pair's direction, 0..1
    split: str | Sequence[str] | None = None  # prompts of these splits (train, eval, ...)
    edited_first: bool = True  # a reviewer's edited answer ranks above every candidate of the comparison
    exclude_flagged: bool = False  # leave out the judgments of reviewers flagged by store.reviewer_flags
    # Who exclude_flagged left out (name -> gold accuracy), set when `read_scoped` reads with this filter.
    excluded_reviewers: dict[str, float] | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("edited_first", "exclude_flagged"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        self.rounds: tuple[int, ...] = _tuple(self.round, int, "round")
        if any(r < 0 for r in self.rounds):
            raise ValueError(f"round: must be >= 0, got {self.round!r}")
        self.models: tuple[str, ...] = _tuple(self.model, str, "model")
        self.reviewers: tuple[str, ...] = _tuple(self.reviewer, str, "reviewer")
        self.splits: tuple[str, ...] = _tuple(self.split, str, "split")
        if self.min_agreement is not None:
            if isinstance(self.min_agreement, bool) or not isinstance(self.min_agreement, int | float):
                raise ValueError(f"min_agreement: expected a number, got {self.min_agreement!r}")
            if not 0.0 <= float(self.min_agreement) <= 1.0:
                raise ValueError(f"min_agreement: must be between 0 and 1, got {self.min_agreement}")

    def as_dict(self) -> dict[str, Any]:
        out = {"round": list(self.rounds), "model": list(self.models), "reviewer": list(self.reviewers),
               "min_agreement": self.min_agreement, "split": list(self.splits), "edited_first": self.edited_first,
               "exclude_flagged": self.exclude_flagged}
        if self.exclude_flagged and self.excluded_reviewers is not None:
            out["excluded_reviewers"] = dict(self.excluded_reviewers)
        return out

    def agreement_ok(self, agreement: float) -> bool:
        return self.min_agreement is None or agreement + 1e-12 >= self.min_agreement

    def model_ok(self, fb: Feedback, *response_ids: int) -> bool:
        return not self.models or any(fb.responses[r].models & set(self.models) for r in response_ids)


def read_scoped(db: str | Path, filters: PairFilter | None) -> Feedback:
    """The judgments the filters' rounds, splits and reviewers scope, without flagged reviewers' when the filter
    says `exclude_flagged` (who they were is recorded on the filter and on the result)."""
    f = filters or PairFilter()
    fb = read_feedback(db, rounds=f.rounds, splits=f.splits, reviewers=f.reviewers)
    if f.exclude_flagged:
        from store.reviewer_flags import flagged_reviewers

        f.excluded_reviewers = flagged_reviewers(db)
        fb = without_reviewers(fb, f.excluded_reviewers)
    return fb


def prompt_fields(fb: Feedback, c: ComparisonInfo) -> dict[str, Any]:
    p = fb.prompts[c.prompt_id]
    return {"comparison_id": c.id, "round": c.round, "split": c.split, "prompt_id": p.id,
            "prompt_text": p.text, "prompt_messages": p.messages}


def rankings_by_comparison(fb: Feedback) -> dict[int, list[Judged]]:
    """The judgments that give a ranking, per comparison, in id order."""
    out: dict[int, list[Judged]] = defaultdict(list)
    for j in fb.judgments:
        if j.use == "ranking":
            out[j.comparison_id].append(j)
    return out


def left_out_judgments(fb: Feedback, edits: bool = False) -> Counter:
    """Skipped and "all bad" judgments: recorded, never turned into preferences (with `edits`, an "all bad" with an
    edited answer gives edit pairs and is not counted here); flagged reviewers' judgments, when left out."""
    uses = Counter(j.use for j in fb.judgments if not (edits and j.use == "all_bad" and j.edit))
    left = Counter({"skipped_judgments": uses["skipped"], "all_bad_judgments": uses["all_bad"]})
    if fb.excluded_judgments:
        left["flagged_reviewer_judgments"] = fb.excluded_judgments
    return left


def edits_by_comparison(fb: Feedback) -> dict[int, list[Judged]]:
    """The counted judgments with an edited answer ("all bad" ones included), per comparison, in id order."""
    out: dict[int, list[Judged]] = defaultdict(list)
    for j in fb.judgments:
        if j.counts and j.edit:
            out[j.comparison_id].append(j)
    return out


def _edit_gaps(fb: Feedback, j: Judged) -> dict[int, int]:
    """candidate id -> how many groups below the edit it is: 1 + its group in the judgment's ranking (an "all
    bad", or a candidate the ranking leaves out: 1)."""
    ranks = _ranks(j.ranking) if j.use == "ranking" else {}
    return {rid: 1 + ranks.get(rid, 0) for rid in fb.comparisons[j.comparison_id].response_ids}


def _edit_records(fb: Feedback, f: PairFilter, c: ComparisonInfo, judged: list[Judged], aggregate: bool,
                  left: Counter) -> list[dict[str, Any]]:
    """The (edit > candidate) records of comparison `c` from its judgments with an edit (see the module doc)."""
    by_text: dict[str, list[Judged]] = defaultdict(list)
    for j in judged:
        by_text[j.edit if aggregate else f"{j.id}"].append(j)  # per reviewer: one group per judgment
    records: list[dict[str, Any]] = []
    for js in by_text.values():
        text, gaps = js[0].edit, [_edit_gaps(fb, j) for j in js]
        for rid in c.response_ids:
            if fb.responses[rid].text.strip() == text.strip():
                left["edit_same_as_candidate"] += 1
                continue
            if not f.model_ok(fb, rid):
                left["other_model"] += 1
                continue
            record = {**prompt_fields(fb, c)}
            if not aggregate:
                record.update({"judgment_id": js[0].id, "reviewer": js[0].reviewer})
            record.update({"chosen_id": None, "rejected_id": rid, "chosen": text, "rejected": fb.responses[rid].text,
                           "margin": gaps[0][rid] if not aggregate else sum(g[rid] for g in gaps) / len(gaps),
                           "agreement": 1.0})
            if aggregate:
                record.update({"n_reviewers": len(js), "reviewers": sorted({j.reviewer for j in js}),
                               "judgment_ids": [j.id for j in js]})
            records.append({**record, "source": "edit"})
    return records


def _ranks(ranking: list[list[int]]) -> dict[int, int]:
    return {rid: pos for pos, group in enumerate(ranking) for rid in group}


def per_reviewer_records(fb: Feedback, f: PairFilter) -> tuple[list[dict[str, Any]], Counter]:
    """One record per (judgment, better, worse), with `agreement`: the share of the comparison's rankings of both
    responses that order them the same way. Returns the records and what was left out, by reason."""
    left = left_out_judgments(fb, edits=f.edited_first)
    records: list[dict[str, Any]] = []
    rankings, edits = rankings_by_comparison(fb), edits_by_comparison(fb) if f.edited_first else {}
    for cid in sorted(set(rankings) | set(edits)):
        c, judged = fb.comparisons[cid], rankings.get(cid, [])
        ranks = [_ranks(j.ranking) for j in judged]
        for j in judged:
            left["tied_pairs"] += tied_pairs(j.ranking)
            for better, worse, gap in ranking_pairs(j.ranking):
                voters = [r for r in ranks if better in r and worse in r]
                agreement = sum(r[better] < r[worse] for r in voters) / len(voters)
                if not f.model_ok(fb, better, worse):
                    left["other_model"] += 1
                elif not f.agreement_ok(agreement):
                    left["below_min_agreement"] += 1
                else:
                    records.append({
                        **prompt_fields(fb, c), "judgment_id": j.id, "reviewer": j.reviewer,
                        "chosen_id": better, "rejected_id": worse, "chosen": fb.responses[better].text,
                        "rejected": fb.responses[worse].text, "margin": gap, "agreement": agreement,
                        "source": "ranking",
                    })
        records += _edit_records(fb, f, c, edits.get(cid, []), False, left)
    return records, left


def aggregated_records(fb: Feedback, f: PairFilter) -> tuple[list[dict[str, Any]], Counter]:
    """One record per comparison and response pair with a strict majority direction (see the module doc)."""
    left = left_out_judgments(fb, edits=f.edited_first)
    records: list[dict[str, Any]] = []
    rankings, edits = rankings_by_comparison(fb), edits_by_comparison(fb) if f.edited_first else {}
    for cid in sorted(set(rankings) | set(edits)):
        c, judged = fb.comparisons[cid], rankings.get(cid, [])
        ranks = [(j, _ranks(j.ranking)) for j in judged]
        for a, b in combinations(c.response_ids, 2):
            voters = [(j, r) for j, r in ranks if a in r and b in r]
            if not voters:
                continue
            a_wins = [(j, r[b] - r[a]) for j, r in voters if r[a] < r[b]]
            b_wins = [(j, r[a] - r[b]) for j, r in voters if r[b] < r[a]]
            if len(a_wins) == len(b_wins):
                left["tied_pairs" if not a_wins else "split_votes"] += 1
                continue
            (better, worse, wins) = (a, b, a_wins) if len(a_wins) > len(b_wins) else (b, a, b_wins)
            agreement = len(wins) / len(voters)
            if not f.model_ok(fb, better, worse):
                left["other_model"] += 1
            elif not f.agreement_ok(agreement):
                left["below_min_agreement"] += 1
            else:
                records.append({
                    **prompt_fields(fb, c), "chosen_id": better, "rejected_id": worse,
                    "chosen": fb.responses[better].text, "rejected": fb.responses[worse].text,
                    "margin": sum(gap for _, gap in wins) / len(wins), "agreement": agreement,
                    "n_reviewers": len(voters), "reviewers": sorted({j.reviewer for j, _ in voters}),
                    "judgment_ids": [j.id for j, _ in voters], "source": "ranking",
                })
        records += _edit_records(fb, f, c, edits.get(cid, []), True, left)
    return records, left


PER_REVIEWER_COLUMNS = [
    "comparison_id", "judgment_id", "reviewer", "round", "split", "prompt_id", "prompt_text", "prompt_messages",
    "chosen_id", "rejected_id", "chosen", "rejected", "margin", "agreement", "source",
]
AGGREGATE_COLUMNS = [
    "comparison_id", "round", "split", "prompt_id", "prompt_text", "prompt_messages", "chosen_id", "rejected_id",
    "chosen", "rejected", "margin", "agreement", "n_reviewers", "reviewers", "judgment_ids", "source",
]


def _frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=columns)
    # pandas 3 stores a text column as "str" with NaN for missing; a prompt without original text stays None.
    frame["prompt_text"] = pd.Series([r["prompt_text"] for r in records], dtype=object, index=frame.index)
    # An edit pair's chosen_id is None: a nullable integer column keeps the others integers (not floats).
    frame["chosen_id"] = pd.array([r["chosen_id"] for r in records], dtype="Int64")
    return frame


def preference_pairs(db: str | Path, filters: PairFilter | None = None) -> pd.DataFrame:
    """Per-reviewer preference pairs: one row per (judgment, better, worse), and with `edited_first` one per
    (judgment with an edit, candidate); skips and ties give none, "all bad" only through its edit."""
    f = filters or PairFilter()
    records, _ = per_reviewer_records(read_scoped(db, f), f)
    return _frame(records, PER_REVIEWER_COLUMNS)


def aggregate_pairs(db: str | Path, filters: PairFilter | None = None) -> pd.DataFrame:
    """Majority pairs over reviewers, one row per comparison and response pair, with agreement and n_reviewers;
    with `edited_first` one per distinct edit of a comparison and candidate."""
    f = filters or PairFilter()
    records, _ = aggregated_records(read_scoped(db, f), f)
    return _frame(records, AGGREGATE_COLUMNS)


def bradley_terry(items: Sequence[int], wins: dict[tuple[int, int], float], prior: float = 0.1,
                  max_iter: int = 1000, tol: float = 1e-10) -> dict[int, float]:
    """Log-strengths (mean 0) from `wins[(i, j)]` = how often i beat j, by MM updates with `prior` pseudo-wins."""
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps the fit finite), got {prior}")
    items = list(items)
    w = {(i, j): wins.get((i, j), 0.0) + prior for i in items for j in items if i != j}
    total_wins = {i: sum(w[i, j] for j in items if j != i) for i in items}
    p = dict.fromkeys(items, 1.0)
    for _ in range(max_iter):
        new = {i: total_wins[i] / sum((w[i, j] + w[j, i]) / (p[i] + p[j]) for j in items if j != i)
               for i in items}
        log_mean = sum(math.log(v) for v in new.values()) / len(new)
        new = {i: v / math.exp(log_mean) for i, v in new.items()}
        change = max(abs(math.log(new[i] / p[i])) for i in items)
        p = new
        if change < tol:
            break
    return {i: math.log(v) for i, v in p.items()}


@dataclass
class ConsensusOrder:
    comparison_id: int
    order: list[int]  # response ids, best first
    scores: dict[int, float] = field(default_factory=dict)  # Bradley-Terry log-strength, mean 0
    n_judgments: int = 0


def _consensus(fb: Feedback, c: ComparisonInfo, judged: list[Judged], prior: float) -> ConsensusOrder:
    wins: dict[tuple[int, int], float] = defaultdict(float)
    for j in judged:
        for better, worse, _ in ranking_pairs(j.ranking):
            wins[better, worse] += 1.0
        for group in j.ranking:
            for a, b in combinations(group, 2):
                wins[a, b] += 0.5
                wins[b, a] += 0.5
    scores = bradley_terry(c.response_ids, wins, prior)
    position = {r: i for i, r in enumerate(c.response_ids)}
    order = sorted(c.response_ids, key=lambda r: (-round(scores[r], 9), position[r]))
    return ConsensusOrder(c.id, order, scores, len(judged))


def _orders(fb: Feedback, prior: float) -> dict[int, ConsensusOrder]:
    return {cid: _consensus(fb, fb.comparisons[cid], judged, prior)
            for cid, judged in sorted(rankings_by_comparison(fb).items())}


def consensus_orders(db: str | Path, filters: PairFilter | None = None,
                     prior: float = 0.1) -> dict[int, ConsensusOrder]:
    """A Bradley-Terry consensus order for every comparison with at least one counted ranking (in the filters'
    rounds, splits and reviewers; `model` and `min_agreement` do not apply to orders)."""
    return _orders(read_scoped(db, filters), prior)


def consensus_order(db: str | Path, comparison_id: int, prior: float = 0.1) -> ConsensusOrder | None:
    """The Bradley-Terry consensus of one comparison; None when no counted judgment ranks it."""
    return _orders(read_feedback(db, comparisons=[comparison_id]), prior).get(comparison_id)
