"""Reading judged comparisons with their prompts and response texts: the one snapshot pairs and exports start from.

`read_feedback` runs a few SELECTs in one short read transaction and returns plain Python objects, so the
database file is held only for the read. Which judgments take part is decided in one place: `Judged.use`, built
on `store.judgments.counted` (not undone, not a skip). Live skips are read too, only to be counted as left out.
`Judged.edit` is the reviewer's edited answer when it has any text. `without_reviewers` leaves some reviewers'
judgments out (store.reviewer_flags: flagged reviewers) and records who and how many.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import duckdb

from store.db import read
from store.dialect import on_postgres
from store.judgments import LIVE_JUDGMENT, counted
from store.migrations import schema_version

Use = Literal["ranking", "all_bad", "skipped", "none"]


@dataclass(frozen=True)
class Judged:
    id: int
    comparison_id: int
    reviewer: str
    ranking: list[list[int]] | None  # groups of response ids, best first
    all_bad: bool
    skipped: bool
    counts: bool  # store.judgments.counted(): not undone and not a skip
    edited_text: str | None

    @property
    def use(self) -> Use:
        """What this judgment gives: a ranking, an "all bad", a skip (counted as left out), or nothing."""
        if not self.counts:
            return "skipped" if self.skipped else "none"
        if self.all_bad:
            return "all_bad"  # an "all bad" never yields a preference, even when a ranking came with it
        return "ranking" if self.ranking else "none"

    @property
    def edit(self) -> str | None:
        """The reviewer's edited answer, when it has any text (a blank edit is no edit)."""
        return self.edited_text if self.edited_text is not None and self.edited_text.strip() else None


@dataclass(frozen=True)
class ComparisonInfo:
    id: int
    prompt_id: int
    response_ids: list[int]
    round: int
    split: str


@dataclass(frozen=True)
class PromptInfo:
    id: int
    text: str | None
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class ResponseInfo:
    id: int
    text: str
    models: frozenset[str]  # the source's writer name and our model row's name, when known


@dataclass
class Feedback:
    judgments: list[Judged]
    comparisons: dict[int, ComparisonInfo]
    prompts: dict[int, PromptInfo]
    responses: dict[int, ResponseInfo]
    schema_version: int
    excluded_reviewers: dict[str, float] = field(default_factory=dict)  # name -> why (gold accuracy), left out
    excluded_judgments: int = 0  # their live judgments (skips included) that were left out


def without_reviewers(fb: Feedback, reviewers: dict[str, float]) -> Feedback:
    """`fb` without the judgments of `reviewers` (name -> the figure they were left out for, e.g. gold accuracy);
    the names and the number of judgments dropped are recorded on the result."""
    kept = [j for j in fb.judgments if j.reviewer not in reviewers]
    return replace(fb, judgments=kept, excluded_reviewers={**fb.excluded_reviewers, **reviewers},
                   excluded_judgments=fb.excluded_judgments + len(fb.judgments) - len(kept))


def _scope_sql(rounds: Sequence[int], splits: Sequence[str], reviewers: Sequence[str],
               comparisons: Sequence[int]) -> tuple[str, list]:
    clauses = [f"j.id IN (SELECT id FROM judgments WHERE {LIVE_JUDGMENT})"]
    params: list = []
    if comparisons:
        clauses.append("c.id = ANY(CAST(? AS BIGINT[]))")
        params.append(list(comparisons))
    if rounds:
        clauses.append("c.round = ANY(CAST(? AS INTEGER[]))")
        params.append(list(rounds))
    if splits:
        clauses.append("p.split = ANY(CAST(? AS VARCHAR[]))")
        params.append(list(splits))
    if reviewers:
        clauses.append("r.name = ANY(CAST(? AS VARCHAR[]))")
        params.append(list(reviewers))
    return " AND ".join(clauses), params


def _read(con: duckdb.DuckDBPyConnection, rounds: Sequence[int], splits: Sequence[str], reviewers: Sequence[str],
          comparisons: Sequence[int]) -> Feedback:
    where, params = _scope_sql(rounds, splits, reviewers, comparisons)
    rows = con.execute(
        "SELECT j.id, j.comparison_id, r.name, j.ranking, j.all_bad, j.skipped, "
        f"{counted('j')} AS counts, j.edited_text "
        "FROM judgments j JOIN reviewers r ON r.id = j.reviewer_id JOIN comparisons c ON c.id = j.comparison_id "
        f"JOIN prompts p ON p.id = c.prompt_id WHERE {where} ORDER BY j.id",
        params,
    ).fetchall()
    judgments = [
        Judged(int(jid), int(cid), name, None if ranking is None else json.loads(ranking), bool(all_bad),
               bool(skipped), bool(counts), edited)
        for jid, cid, name, ranking, all_bad, skipped, counts, edited in rows
    ]
    comparison_ids = sorted({j.comparison_id for j in judgments})
    comparisons = {
        int(cid): ComparisonInfo(int(cid), int(pid), [int(x) for x in rids], int(rnd), split)
        for cid, pid, rids, rnd, split in con.execute(
            "SELECT c.id, c.prompt_id, c.response_ids, c.round, p.split FROM comparisons c "
            "JOIN prompts p ON p.id = c.prompt_id WHERE c.id = ANY(CAST(? AS BIGINT[])) ORDER BY c.id",
            [comparison_ids],
        ).fetchall()
    }
    prompts = {
        int(pid): PromptInfo(int(pid), text, json.loads(messages))
        for pid, text, messages in con.execute(
            "SELECT id, text, messages FROM prompts WHERE id = ANY(CAST(? AS BIGINT[])) ORDER BY id",
            [sorted({c.prompt_id for c in comparisons.values()})],
        ).fetchall()
    }
    responses = {
        int(rid): ResponseInfo(int(rid), text, frozenset(n for n in (source_name, model_name) if n))
        for rid, text, source_name, model_name in con.execute(
            "SELECT r.id, r.text, r.model_name, m.name FROM responses r LEFT JOIN models m ON m.id = r.model_id "
            "WHERE r.id = ANY(CAST(? AS BIGINT[])) ORDER BY r.id",
            [sorted({r for c in comparisons.values() for r in c.response_ids})],
        ).fetchall()
    }
    return Feedback(judgments, comparisons, prompts, responses, schema_version(con))


def read_feedback(db: str | Path, *, rounds: Sequence[int] = (), splits: Sequence[str] = (),
                  reviewers: Sequence[str] = (), comparisons: Sequence[int] = ()) -> Feedback:
    """Live judgments (optionally only of some rounds, prompt splits, reviewers or comparisons) with everything
    needed to export them."""

    def work(con: duckdb.DuckDBPyConnection) -> Feedback:
        con.execute("BEGIN TRANSACTION")  # one consistent snapshot across the SELECTs
        try:
            if on_postgres(con):  # READ COMMITTED takes one per statement
                con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return _read(con, rounds, splits, reviewers, comparisons)
        finally:
            con.execute("ROLLBACK")

    return read(db, work)
