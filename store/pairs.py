"""Preference pairs from rankings: per reviewer, aggregated over reviewers, and a Bradley-Terry consensus order.

- A ranking (groups of response ids, best first; a group of 2+ is a tie) expands to (better, worse, margin) for
  every two responses in different groups, margin = how many groups apart they are. Tied responses give no pair.
- Only judgments that count give pairs (`store.feedback.Judged.use`): never skips, "all bad" or undone ones.
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

from store.feedback import ComparisonInfo, Feedback, Judged, read_feedback

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

    def __post_init__(self) -> None:
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
        return {"round": list(self.rounds), "model": list(self.models), "reviewer": list(self.reviewers),
                "min_agreement": self.min_agreement, "split": list(self.splits)}

    def agreement_ok(self, agreement: float) -> bool:
        return self.min_agreement is None or agreement + 1e-12 >= self.min_agreement

    def model_ok(self, fb: Feedback, *response_ids: int) -> bool:
        return not self.models or any(fb.responses[r].models & set(self.models) for r in response_ids)


def read_scoped(db: str | Path, filters: PairFilter | None) -> Feedback:
    f = filters or PairFilter()
    return read_feedback(db, rounds=f.rounds, splits=f.splits, reviewers=f.reviewers)


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


def left_out_judgments(fb: Feedback) -> Counter:
    """Skipped and "all bad" judgments: recorded, never turned into preferences."""
    uses = Counter(j.use for j in fb.judgments)
    return Counter({"skipped_judgments": uses["skipped"], "all_bad_judgments": uses["all_bad"]})


def _ranks(ranking: list[list[int]]) -> dict[int, int]:
    return {rid: pos for pos, group in enumerate(ranking) for rid in group}


def per_reviewer_records(fb: Feedback, f: PairFilter) -> tuple[list[dict[str, Any]], Counter]:
    """One record per (judgment, better, worse), with `agreement`: the share of the comparison's rankings of both
    responses that order them the same way. Returns the records and what was left out, by reason."""
    left = left_out_judgments(fb)
    records: list[dict[str, Any]] = []
    for cid, judged in sorted(rankings_by_comparison(fb).items()):
        c = fb.comparisons[cid]
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
                    })
    return records, left


def aggregated_records(fb: Feedback, f: PairFilter) -> tuple[list[dict[str, Any]], Counter]:
    """One record per comparison and response pair with a strict majority direction (see the module doc)."""
    left = left_out_judgments(fb)
    records: list[dict[str, Any]] = []
    for cid, judged in sorted(rankings_by_comparison(fb).items()):
        c = fb.comparisons[cid]
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
                    "judgment_ids": [j.id for j, _ in voters],
                })
    return records, left


PER_REVIEWER_COLUMNS = [
    "comparison_id", "judgment_id", "reviewer", "round", "split", "prompt_id", "prompt_text", "prompt_messages",
    "chosen_id", "rejected_id", "chosen", "rejected", "margin", "agreement",
]
AGGREGATE_COLUMNS = [
    "comparison_id", "round", "split", "prompt_id", "prompt_text", "prompt_messages", "chosen_id", "rejected_id",
    "chosen", "rejected", "margin", "agreement", "n_reviewers", "reviewers", "judgment_ids",
]


def _frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=columns)
    # pandas 3 stores a text column as "str" with NaN for missing; a prompt without original text stays None.
    frame["prompt_text"] = pd.Series([r["prompt_text"] for r in records], dtype=object, index=frame.index)
    return frame


def preference_pairs(db: str | Path, filters: PairFilter | None = None) -> pd.DataFrame:
    """Per-reviewer preference pairs: one row per (judgment, better, worse); skips, "all bad" and ties give none."""
    f = filters or PairFilter()
    records, _ = per_reviewer_records(read_scoped(db, f), f)
    return _frame(records, PER_REVIEWER_COLUMNS)


def aggregate_pairs(db: str | Path, filters: PairFilter | None = None) -> pd.DataFrame:
    """Majority pairs over reviewers, one row per comparison and response pair, with agreement and n_reviewers."""
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
