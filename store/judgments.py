"""Recording one reviewer's judgment of one comparison: validated, idempotent, committed before it returns."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from store.audit import log_event
from store.batch import ensure_reviewers
from store.db import lock_queue, write

FLAGS = ("unsafe", "off_topic", "factually_wrong", "other")
MAX_TEXT_CHARS = {"edited_text": 100_000, "rationale": 10_000}  # an edited answer, a reviewer's "why"

# A judgment that was undone stays in the table with `retracted_at` set; every count, export and pair must skip it.
# LIVE: not retracted (skips included: a reviewer who skipped is not offered the item again).
# COUNTED: live and not a skip -- what completes a comparison and what exports read.
LIVE_JUDGMENT = "retracted_at IS NULL"
COUNTED_JUDGMENT = "retracted_at IS NULL AND NOT skipped"


def counted(alias: str = "j") -> str:
    """The COUNTED predicate for a judgments table under `alias`, for SQL joins (`... WHERE {counted('j')}`)."""
    return f"({alias}.retracted_at IS NULL AND NOT {alias}.skipped)"


@dataclass
class NewJudgment:
    comparison_id: int
    reviewer: str
    idempotency_key: str
    ranking: list[list[int]] | None = None  # ordered groups of response ids, best first; 2+ in a group tie
    all_bad: bool = False
    skipped: bool = False
    flags: list[str] = field(default_factory=list)
    edited_text: str | None = None
    rationale: str | None = None
    display_order: list[int] | None = None
    time_spent_ms: int | None = None
    source: str = "app"


def check_ranking(ranking: list[list[int]] | None, response_ids: list[int], *, all_bad: bool, skipped: bool) -> None:
    """A full ranking names each of the comparison's responses exactly once; skips and "all bad" need none."""
    if skipped and (ranking or all_bad):
        raise ValueError("a skipped judgment carries no ranking and no 'all bad'")
    if ranking is None:
        if not (all_bad or skipped):
            raise ValueError("a judgment needs a ranking, 'all bad' or a skip")
        return
    named = [r for group in ranking for r in group]
    if any(len(group) == 0 for group in ranking):
        raise ValueError("ranking: empty group")
    unknown = sorted(set(named) - set(response_ids))
    if unknown:
        raise ValueError(f"ranking: response ids {unknown} are not in this comparison ({response_ids})")
    if len(named) != len(set(named)):
        raise ValueError("ranking: a response appears more than once")
    missing = sorted(set(response_ids) - set(named))
    if missing:
        raise ValueError(f"ranking: responses {missing} are not ranked (a full ranking is required)")


def check_texts(j: NewJudgment) -> None:
    """The edited answer and the rationale: bounded in length, and no NUL characters."""
    for name in MAX_TEXT_CHARS:
        check_text(name, getattr(j, name))


def check_text(name: str, value: str | None) -> None:
    """One of MAX_TEXT_CHARS' texts (a judgment's or a draft's): bounded in length, no NUL characters."""
    if value is None:
        return
    limit = MAX_TEXT_CHARS[name]
    if len(value) > limit:
        raise ValueError(f"{name}: {len(value):,} characters, more than the {limit:,} allowed")
    if "\0" in value:
        raise ValueError(f"{name}: contains a NUL character")


def _insert(con: duckdb.DuckDBPyConnection, j: NewJudgment,
            known: tuple[int, list[int]] | None = None) -> int:
    if known is None:
        found = con.execute("SELECT id FROM judgments WHERE idempotency_key = ?", [j.idempotency_key]).fetchone()
        if found:
            return int(found[0])  # a retried submit: stored once
        row = con.execute("SELECT response_ids FROM comparisons WHERE id = ?", [j.comparison_id]).fetchone()
        if row is None:
            raise ValueError(f"no comparison with id {j.comparison_id}")
        response_ids = list(row[0])
    else:
        response_ids = known[1]
    check_ranking(j.ranking, response_ids, all_bad=j.all_bad, skipped=j.skipped)
    bad_flags = sorted(set(j.flags) - set(FLAGS))
    if bad_flags:
        raise ValueError(f"flags: unknown {bad_flags} (known: {', '.join(FLAGS)})")
    check_texts(j)
    if known is None:
        kind = "simulated" if j.source.startswith("simulated") else "human"
        reviewer_id = ensure_reviewers(con, {j.reviewer}, kind=kind)[0][j.reviewer]
    else:
        reviewer_id = known[0]
    # ON CONFLICT: a concurrent transaction that stored the same key first (PostgreSQL waits for it, READ
    # COMMITTED) leaves nothing returned, and the committed row is the answer.
    inserted = con.execute(
        "INSERT INTO judgments (id, comparison_id, reviewer_id, ranking, all_bad, skipped, flags, edited_text, "
        "rationale, display_order, time_spent_ms, idempotency_key, source) "
        "VALUES (nextval('judgments_id'),?,?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        [
            j.comparison_id, reviewer_id, None if j.ranking is None else json.dumps(j.ranking), j.all_bad,
            j.skipped, list(j.flags), j.edited_text, j.rationale, j.display_order, j.time_spent_ms,
            j.idempotency_key, j.source,
        ],
    ).fetchone()
    if inserted is None:
        (jid,) = con.execute("SELECT id FROM judgments WHERE idempotency_key = ?", [j.idempotency_key]).fetchone()
        return int(jid)
    return int(inserted[0])


def insert_judgment(con: duckdb.DuckDBPyConnection, judgment: NewJudgment,
                    known: tuple[int, list[int]] | None = None) -> int:
    """`add_judgment` inside the caller's transaction (the queue closes the lease in the same one). `known`:
    (reviewer id, the comparison's response ids) when the caller has read them and the idempotency key."""
    return _insert(con, judgment, known)


def add_judgment(db: str | Path, judgment: NewJudgment) -> int:
    """Store `judgment` in its own transaction and return its id once committed; a repeated key returns the first.
    On PostgreSQL it takes the queue's lock first: a judgment changes what the queue decides, and the key's lookup
    then sees every submit committed before it."""

    def work(con: duckdb.DuckDBPyConnection) -> int:
        lock_queue(con)
        return _insert(con, judgment)

    for attempt in range(5):
        try:
            return write(db, work)
        except (duckdb.ConstraintException, duckdb.TransactionException) as e:
            # DuckDB: another transaction stored the same key after this one's lookup (ON CONFLICT does not see
            # uncommitted rows there); once it committed, the lookup finds its row. The clash shows at the insert
            # (ConstraintException naming idempotency_key) or, when both inserted, at COMMIT (TransactionException:
            # 'Failed to commit: ... constraint violation: duplicate key "<key>"', seen once in CI)
            text = str(e)
            ours = "idempotency_key" in text or ("constraint violation" in text
                                                 and f'"{judgment.idempotency_key}"' in text)
            if not ours or attempt == 4:
                raise
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")


def retract_judgment(con: duckdb.DuckDBPyConnection, judgment_id: int, reviewer_id: int, actor: str,
                     window_s: float) -> int:
    """Mark a reviewer's own judgment retracted (an undo) inside the caller's transaction; returns its comparison.

    Only the reviewer who made it may retract it, once, within `window_s` seconds of the submit. The row stays;
    the undo is an audit event.
    """
    row = con.execute(
        "SELECT comparison_id, reviewer_id, retracted_at IS NOT NULL, "
        "CAST(extract(epoch FROM date_trunc('milliseconds', localtimestamp) - date_trunc('milliseconds', created_at)) "
        "AS DOUBLE PRECISION) FROM judgments WHERE id = ?",
        [judgment_id],
    ).fetchone()
    if row is None or row[1] != reviewer_id:
        raise ValueError(f"judgment {judgment_id}: not one of yours")
    comparison_id, _, retracted, age_s = row
    if retracted:
        raise ValueError(f"judgment {judgment_id}: already undone")
    if age_s > window_s:
        raise ValueError(f"judgment {judgment_id}: too late to undo ({age_s:.0f} s ago, window {window_s:.0f} s)")
    con.execute(
        "UPDATE judgments SET retracted_at = localtimestamp, retracted_by = ? WHERE id = ?",
        [actor, judgment_id],
    )
    log_event(con, actor, "judgment.undo", {"judgment_id": judgment_id, "comparison_id": comparison_id})
    return int(comparison_id)
