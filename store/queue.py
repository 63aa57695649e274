"""The reviewer's queue: which comparison to show next, held under a lease; submit, skip and undo.

- A comparison needs `required_reviewers` distinct reviewers with a counted judgment (see store.judgments).
  Open, unexpired leases hold a slot, so concurrent reviewers do not overfill it; an expired lease or a skip
  gives the slot back. Nobody is offered a comparison they already judged or skipped, or one that holds a
  response they wrote themselves (a response whose `params` carry `edited_by_reviewer_id`).
- Order: by priority - 0.5 x round, highest first (store.queue_cache.ORDER_SQL, ROUND_STEP), then round (oldest
  first), age (oldest first), id: priority counts across rounds, and each round of age is worth 0.5 of priority.
  Priorities from the reward model's uncertainty (reward.score, set after every `round next` and loop round when a
  reward model exists) lie in [0, 1]: a new round's least certain comparisons go ahead of the previous round's
  confident or never-scored (priority 0) ones, but a comparison two rounds older comes before any of them, so an
  old round is never starved. With equal priorities (nothing scored) this is the old order, oldest round first; an
  admin-set priority above 1 is worth that many half-rounds of age.
- Gold comparisons (rows in `gold_answers`) are mixed in at the `gold_rate` setting, each reviewer at most once.
- Leases are handed out under a process-wide lock: DuckDB lets one process hold the file, so this lock plus the
  file lock serialize every lease decision.
- The idempotency key of a submit is `app:{reviewer}:{comparison}:{lease}` (`simulated:...` for simulated
  reviewers): a retried submit is stored once, and a new attempt after an undo gets a new lease, hence a new key.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from store import queue_cache
from store.audit import log_event
from store.db import lock_queue, read, write
from store.judgments import MAX_TEXT_CHARS, NewJudgment, check_text, counted, insert_judgment, retract_judgment
from store.settings import settings_in

_lease_lock = threading.Lock()


class AlreadyJudged(ValueError):
    """The reviewer already has a live judgment for this comparison."""


@dataclass
class Item:
    lease_id: int
    comparison_id: int
    round: int
    messages: list[dict[str, str]]  # the prompt as chat turns
    responses: list[tuple[int, str]]  # (response id, text) in the order this reviewer sees them
    is_gold: bool = False
    progress: dict[str, int] = field(default_factory=dict)  # the reviewer's progress when it was handed out
    draft: dict[str, Any] | None = None  # the half-made answer kept with the lease (see save_draft)


@dataclass
class Answer:
    ranking: list[list[int]] | None = None  # groups of response ids, best first
    all_bad: bool = False
    flags: list[str] = field(default_factory=list)
    rationale: str | None = None
    edited_text: str | None = None
    time_spent_ms: int | None = None


def display_order(reviewer_id: int, comparison_id: int, response_ids: list[int]) -> list[int]:
    """The order one reviewer sees one comparison's responses in: shuffled, but the same on every rerun."""

    def key(rid: int) -> str:
        return hashlib.sha256(f"{reviewer_id}:{comparison_id}:{rid}".encode()).hexdigest()

    return sorted(response_ids, key=key)


_OPEN = "l.closed_at IS NULL AND l.expires_at > localtimestamp"
_ORDER = f"ORDER BY {queue_cache.ORDER_SQL.format(c='')} LIMIT 1"
# One pass over the queue for one reviewer: what is left for them, the next regular item, the next gold item.
_QUEUE = f"""
    WITH done AS (
        SELECT comparison_id, count(DISTINCT reviewer_id) AS n FROM judgments j WHERE {counted('j')} GROUP BY 1),
    held AS (SELECT comparison_id, count(*) AS n FROM leases l WHERE {_OPEN} GROUP BY 1),
    mine AS (SELECT DISTINCT comparison_id FROM judgments WHERE reviewer_id = ? AND retracted_at IS NULL),
    own AS (SELECT coalesce(array_agg(id), CAST(ARRAY[] AS BIGINT[])) AS ids FROM responses
            WHERE params->>'edited_by_reviewer_id' = CAST(? AS VARCHAR)),
    cand AS MATERIALIZED (
        SELECT c.id, c.round, c.priority, c.created_at, c.required_reviewers AS needed, coalesce(done.n, 0) AS d,
               coalesce(held.n, 0) AS h, g.comparison_id IS NOT NULL AS gold
        FROM comparisons c
        LEFT JOIN done ON done.comparison_id = c.id LEFT JOIN held ON held.comparison_id = c.id
        LEFT JOIN gold_answers g ON g.comparison_id = c.id
        WHERE c.id NOT IN (SELECT comparison_id FROM mine) AND NOT (c.response_ids && (SELECT ids FROM own))
          AND (CAST(? AS INTEGER) IS NULL OR c.round = ?))
    SELECT (SELECT count(*) FROM cand WHERE NOT gold AND d < needed),
           (SELECT id FROM cand WHERE NOT gold AND d + h < needed {_ORDER}),
           (SELECT id FROM cand WHERE gold {_ORDER})
"""


# The query above aggregates every judgment on every call (20+ ms with 100k judgments): the queue normally picks
# from what store.queue_cache keeps instead, and uses the query when more comparisons are open than it keeps.
_OPEN_CACHE_MAX = 20_000


def _queue_query(con: duckdb.DuckDBPyConnection, reviewer_id: int,
                 round: int | None) -> tuple[int, int | None, int | None]:
    """`_QUEUE` for one reviewer (and round): its positional parameters in order."""
    return tuple(con.execute(_QUEUE, [reviewer_id, reviewer_id, round, round]).fetchone())


def _queue_state(con: duckdb.DuckDBPyConnection, reviewer_id: int,
                 round: int | None = None) -> tuple[int, int | None, int | None]:
    """(comparisons still open to the reviewer, next regular id, next gold id); only `round`'s when given."""
    view = queue_cache.snapshot(con)
    return _pick(con, view, reviewer_id, round, _held_counts(con)[0])


def _held_counts(con: duckdb.DuckDBPyConnection, reviewer_id: int | None = None) -> tuple[dict[int, int], int | None]:
    """Open leases per comparison, and the reviewer's own open lease (newest) if any; closes expired ones first
    when there are some (every reader already treats them as closed)."""
    held: dict[int, int] = {}
    mine, expired = None, False
    for cid, rid, lid, live in con.execute(
            "SELECT comparison_id, reviewer_id, id, expires_at > localtimestamp FROM leases "
            "WHERE closed_at IS NULL").fetchall():
        if not live:
            expired = True
            continue
        held[cid] = held.get(cid, 0) + 1
        if rid == reviewer_id and (mine is None or lid > mine):
            mine = lid
    if expired:
        con.execute(
            "UPDATE leases SET closed_at = localtimestamp, outcome = 'expired' "
            "WHERE closed_at IS NULL AND expires_at <= localtimestamp")
    return held, mine


def _pick(con: duckdb.DuckDBPyConnection, view: queue_cache.Snapshot, reviewer_id: int, round: int | None,
          held: dict[int, int]) -> tuple[int, int | None, int | None]:
    if len(view.open) > _OPEN_CACHE_MAX:
        remaining, regular, gold = _queue_query(con, reviewer_id, round)
        return int(remaining), regular, gold
    mine = view.reviewer(con, reviewer_id).live
    own = view.own(con, reviewer_id)
    golds = view.golds(con)
    gold_ids = {cid for cid, _, _ in golds}

    def offered(cid: int, rnd: int, response_ids) -> bool:
        return cid not in mine and (round is None or rnd == round) and not (own and own.intersection(response_ids))

    remaining, regular = 0, None
    for cid in view.order:
        c = view.open[cid]
        if cid in gold_ids or not offered(cid, c.round, c.response_ids):
            continue
        remaining += 1
        if regular is None and len(c.reviewers) + held.get(cid, 0) < c.needed:
            regular = cid
    gold = next((cid for cid, rnd, rids in golds if offered(cid, rnd, rids)), None)
    return remaining, regular, gold


def progress_in(con: duckdb.DuckDBPyConnection, reviewer_id: int) -> dict[str, int]:
    """Done today, done in total (counted judgments), and comparisons still open to this reviewer."""
    view = queue_cache.snapshot(con)
    return view.reviewer(con, reviewer_id).progress(_pick(con, view, reviewer_id, None, _held_counts(con)[0])[0])


def _load_item(con: duckdb.DuckDBPyConnection, lease_id: int, progress: dict[str, int]) -> Item:
    row = con.execute(
        "SELECT l.reviewer_id, c.id, c.round, c.response_ids, p.messages, "
        "c.id IN (SELECT comparison_id FROM gold_answers), l.draft "
        "FROM leases l JOIN comparisons c ON c.id = l.comparison_id JOIN prompts p ON p.id = c.prompt_id "
        "WHERE l.id = ?",
        [lease_id],
    ).fetchone()
    reviewer_id, cid, rnd, response_ids, messages, gold, draft = row
    return _item(con, lease_id, reviewer_id, cid, rnd, list(response_ids), messages, bool(gold), progress,
                 json.loads(draft) if draft else None)


def _item(con: duckdb.DuckDBPyConnection, lease_id: int, reviewer_id: int, cid: int, rnd: int,
          response_ids: list[int], messages: str | None, gold: bool, progress: dict[str, int],
          draft: dict[str, Any] | None = None, prompt_id: int | None = None) -> Item:
    """An Item from what is known; the prompt (by `prompt_id` when `messages` is not given) and texts are read."""
    if messages is None:
        (messages,) = con.execute("SELECT messages FROM prompts WHERE id = ?", [prompt_id]).fetchone()
    marks = ", ".join("?" * len(response_ids))
    texts = dict(con.execute(f"SELECT id, text FROM responses WHERE id IN ({marks})", response_ids).fetchall())
    order = display_order(reviewer_id, cid, response_ids)
    return Item(lease_id, cid, rnd, json.loads(messages), [(r, texts[r]) for r in order], gold, progress, draft)


def _new_lease(con: duckdb.DuckDBPyConnection, reviewer_id: int, comparison_id: int, minutes: int) -> int:
    (lid,) = con.execute(
        "INSERT INTO leases (id, comparison_id, reviewer_id, leased_at, expires_at) VALUES "
        "(nextval('leases_id'), ?, ?, localtimestamp, localtimestamp + CAST(? AS INTEGER) * INTERVAL '1 minute') "
        "RETURNING id",
        [comparison_id, reviewer_id, int(minutes)],
    ).fetchone()
    return int(lid)


def _wants_gold(reviewer: queue_cache.Reviewer, golds: list, rate: float) -> bool:
    if rate <= 0:
        return False
    answered = sum(1 for cid, _, _ in golds if cid in reviewer.counted)
    return math.floor(rate * (len(reviewer.counted) + 1)) > answered


def next_item_in(con: duckdb.DuckDBPyConnection, reviewer_id: int, round: int | None = None,
                 view: queue_cache.Snapshot | None = None) -> Item | None:
    """The reviewer's open lease if they hold one, else a new lease on the next comparison (inside a transaction).

    With `round`, only that round's comparisons are handed out (simulated reviewers working one round). `view`:
    the queue's view as of this transaction when the caller has it (read after its last judgment).
    """
    held, mine = _held_counts(con, reviewer_id)
    view = view or queue_cache.snapshot(con)
    remaining, regular, gold = _pick(con, view, reviewer_id, round, held)
    reviewer = view.reviewer(con, reviewer_id)
    progress = reviewer.progress(remaining)
    if mine is not None:
        return _load_item(con, mine, progress)
    s = view.settings(con)
    pick = gold if gold is not None and _wants_gold(reviewer, view.golds(con), s["gold_rate"]) else regular
    if pick is None:
        return None
    lease_id = _new_lease(con, reviewer_id, pick, s["lease_minutes"])
    c = view.open.get(pick)
    if c is None:  # a gold item (gold comparisons may be complete) or more open ones than the cache keeps
        return _load_item(con, lease_id, progress)
    return _item(con, lease_id, reviewer_id, pick, c.round, list(c.response_ids), None, pick == gold, progress,
                 prompt_id=c.prompt_id)


def next_item(db: str | Path, reviewer_id: int, round: int | None = None) -> Item | None:
    """What to show this reviewer now (None when their queue is empty); the item stays leased to them."""
    with _lease_lock:
        return write(db, lambda con: next_item_in(con, reviewer_id, round), keeps_queue_cache=True)


def _record(con: duckdb.DuckDBPyConnection, lease_id: int, reviewer_id: int, reviewer: str, answer: Answer,
            skipped: bool, source: str = "app") -> tuple[int, queue_cache.Snapshot | None]:
    """Store the answer for the lease and close it: the judgment id, and the queue's view with it (None for a
    retried submit, stored before)."""
    lease = con.execute("SELECT comparison_id, reviewer_id, outcome FROM leases WHERE id = ?", [lease_id]).fetchone()
    if lease is None or lease[1] != reviewer_id:
        raise ValueError(f"lease {lease_id} is not yours")
    cid, _, outcome = lease
    view = queue_cache.snapshot(con)
    if not view.active(con, reviewer_id):
        raise ValueError("this account is deactivated")
    key = f"{source}:{reviewer_id}:{cid}:{lease_id}"
    found = con.execute("SELECT id FROM judgments WHERE idempotency_key = ?", [key]).fetchone()
    if found:
        return int(found[0]), None  # a retried submit: stored once
    if outcome == "released":
        raise ValueError("this item was given back to the queue; it is no longer yours to answer")
    if cid in view.reviewer(con, reviewer_id).live:
        raise AlreadyJudged(f"you already judged comparison {cid}")
    c = view.open.get(cid)
    response_ids = list(c.response_ids) if c is not None else list(con.execute(
        "SELECT response_ids FROM comparisons WHERE id = ?", [cid]).fetchone()[0])
    jid = insert_judgment(con, NewJudgment(
        comparison_id=cid, reviewer=reviewer, idempotency_key=key,
        ranking=None if skipped else answer.ranking, all_bad=False if skipped else answer.all_bad, skipped=skipped,
        flags=list(answer.flags), edited_text=answer.edited_text or None, rationale=answer.rationale or None,
        display_order=display_order(reviewer_id, cid, response_ids), time_spent_ms=answer.time_spent_ms,
        source=source,
    ), known=(reviewer_id, response_ids))
    con.execute(
        "UPDATE leases SET closed_at = localtimestamp, outcome = ?, judgment_id = ? WHERE id = ?",
        ["skipped" if skipped else "submitted", jid, lease_id],
    )
    return jid, queue_cache.appended(view, jid, cid, reviewer_id, counted=not skipped)


def submit(db: str | Path, lease_id: int, reviewer_id: int, reviewer: str, answer: Answer,
           skipped: bool = False) -> int:
    """Store the reviewer's answer for the leased comparison; returns the judgment id once committed."""
    with _lease_lock:
        return write(db, lambda con: _record(con, lease_id, reviewer_id, reviewer, answer, skipped)[0],
                     keeps_queue_cache=True)


def submit_and_next(db: str | Path, lease_id: int, reviewer_id: int, reviewer: str, answer: Answer,
                    skipped: bool = False, *, source: str = "app",
                    round: int | None = None) -> tuple[int, Item | None]:
    """Submit (or skip) and lease the next item in one transaction: the judgment id and what to show next.

    `source` marks where the judgment came from ('app'; 'simulated' for rankloop simulate) and prefixes its
    idempotency key; `round` limits the next item to one round.
    """

    def work(con: duckdb.DuckDBPyConnection) -> tuple[int, Item | None]:
        jid, view = _record(con, lease_id, reviewer_id, reviewer, answer, skipped, source)
        return jid, next_item_in(con, reviewer_id, round, view)

    with _lease_lock:
        return write(db, work, keeps_queue_cache=True)


def undo(db: str | Path, judgment_id: int, reviewer_id: int, reviewer: str,
         release_lease_id: int | None = None) -> Item:
    """Retract the reviewer's judgment (within the undo window) and hand the comparison back to them.

    The lease they held on their next item, if any, is released so that item returns to the queue.
    """

    def work(con: duckdb.DuckDBPyConnection) -> Item:
        lock_queue(con)  # PostgreSQL: the queue's lock first, as every queue decision takes it (no-op on DuckDB)
        s = settings_in(con)
        cid = retract_judgment(con, judgment_id, reviewer_id, reviewer, s["undo_window_s"])
        if release_lease_id is not None:
            con.execute(
                "UPDATE leases SET closed_at = localtimestamp, outcome = 'released' "
                "WHERE id = ? AND reviewer_id = ? AND closed_at IS NULL",
                [release_lease_id, reviewer_id],
            )
        lease_id = _new_lease(con, reviewer_id, cid, s["lease_minutes"])
        _put_draft(con, lease_id, reviewer_id, _answer_as_draft(con, judgment_id))
        return _load_item(con, lease_id, progress_in(con, reviewer_id))

    with _lease_lock:
        return write(db, work)


def _answer_as_draft(con: duckdb.DuckDBPyConnection, judgment_id: int) -> dict[str, Any]:
    """A stored judgment as a draft: what the reviewer submitted, to edit and submit again after an undo."""
    ranking, all_bad, flags, rationale, edited = con.execute(
        "SELECT ranking, all_bad, flags, rationale, edited_text FROM judgments WHERE id = ?", [judgment_id]).fetchone()
    groups = json.loads(ranking) if ranking else []
    ranks = {str(rid): pos for pos, group in enumerate(groups, start=1) for rid in group}
    return {"ranks": ranks, "all_bad": bool(all_bad), "flags": list(flags or []), "rationale": rationale or "",
            "edited_text": edited or ""}


def _put_draft(con: duckdb.DuckDBPyConnection, lease_id: int, reviewer_id: int, draft: dict[str, Any] | None) -> bool:
    return bool(con.execute(
        "UPDATE leases SET draft = ?, updated_at = localtimestamp "
        "WHERE id = ? AND reviewer_id = ? AND closed_at IS NULL RETURNING id",
        [None if draft is None else json.dumps(draft), lease_id, reviewer_id]).fetchall())


def save_draft(db: str | Path, lease_id: int, reviewer_id: int, draft: dict[str, Any] | None) -> bool:
    """Keep the reviewer's half-made answer with their open lease (False when the lease is no longer open).

    `draft`: {"ranks": {response id: rank}, "all_bad", "flags", "rationale", "edited_text"}; None forgets it.
    A reload, a lost connection or a server restart hands the lease back with it (`Item.draft`).
    """
    for name in MAX_TEXT_CHARS:  # what the judgment would refuse is not kept either: ValueError naming it
        check_text(name, (draft or {}).get(name))
    return write(db, lambda con: _put_draft(con, lease_id, reviewer_id, draft), keeps_queue_cache=True)


def release(db: str | Path, lease_id: int, reviewer_id: int) -> None:
    """Give a lease back unanswered (logout): the comparison returns to the queue at once."""

    def work(con: duckdb.DuckDBPyConnection) -> None:
        lock_queue(con)  # before the lease's row lock: the commit's bump takes the queue's lock anyway
        con.execute("UPDATE leases SET closed_at = localtimestamp, outcome = 'released' "
                    "WHERE id = ? AND reviewer_id = ? AND closed_at IS NULL", [lease_id, reviewer_id])

    write(db, work)


def release_reviewer_leases(con: duckdb.DuckDBPyConnection, reviewer_id: int) -> int:
    """Give back every open lease of a reviewer (their last session ended); returns how many."""
    lock_queue(con)  # PostgreSQL: before the leases' row locks, so a submit holding the queue's lock never waits here
    return len(con.execute(
        "UPDATE leases SET closed_at = localtimestamp, outcome = 'released' "
        "WHERE reviewer_id = ? AND closed_at IS NULL RETURNING id", [reviewer_id]).fetchall())


def active_leases(db: str | Path) -> list[dict[str, Any]]:
    """Open, unexpired leases: who holds which comparison since when, and until when (the admin's Queue page)."""
    rows = read(db, lambda con: con.execute(
        "SELECT l.id, l.comparison_id, c.round, r.name, l.leased_at, l.expires_at, l.draft IS NOT NULL "
        "FROM leases l JOIN reviewers r ON r.id = l.reviewer_id JOIN comparisons c ON c.id = l.comparison_id "
        f"WHERE {_OPEN} ORDER BY l.leased_at").fetchall())
    cols = ["lease", "comparison", "round", "reviewer", "leased at", "expires at", "has draft"]
    return [dict(zip(cols, r, strict=True)) for r in rows]


def release_lease(db: str | Path, lease_id: int, actor: str) -> bool:
    """An admin gives a lease back to the queue (the reviewer's next submit of it is refused); audited."""

    def work(con: duckdb.DuckDBPyConnection) -> bool:
        lock_queue(con)
        row = con.execute(
            "UPDATE leases SET closed_at = localtimestamp, outcome = 'released' "
            "WHERE id = ? AND closed_at IS NULL RETURNING comparison_id, reviewer_id", [lease_id]).fetchone()
        if row:
            log_event(con, actor, "queue.release_lease", {"lease": lease_id, "comparison_id": row[0],
                                                           "reviewer_id": row[1]})
        return row is not None

    return write(db, work)


def progress(db: str | Path, reviewer_id: int) -> dict[str, int]:
    return read(db, lambda con: progress_in(con, reviewer_id))


def my_judgments(db: str | Path, reviewer_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """The reviewer's own judgments, newest first (never anyone else's)."""
    rows = read(db, lambda con: con.execute(
        "SELECT id, comparison_id, created_at, ranking, all_bad, skipped, flags, display_order, time_spent_ms, "
        "retracted_at IS NOT NULL, rationale FROM judgments WHERE reviewer_id = ? ORDER BY id DESC LIMIT ?",
        [reviewer_id, limit]).fetchall())
    cols = ["id", "comparison_id", "created_at", "ranking", "all_bad", "skipped", "flags", "display_order",
            "time_spent_ms", "undone", "rationale"]
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        d["ranking"] = json.loads(d["ranking"]) if d["ranking"] else None
        out.append(d)
    return out


def set_required_reviewers(db: str | Path, n: int, actor: str, round: int | None = None) -> int:
    """Set N (distinct reviewers needed) on every comparison, or on one round's; returns how many changed."""
    if not 1 <= n <= 50:
        raise ValueError("required reviewers: must be between 1 and 50")

    def work(con: duckdb.DuckDBPyConnection) -> int:
        changed = len(con.execute(
            "UPDATE comparisons SET required_reviewers = ? WHERE (CAST(? AS INTEGER) IS NULL OR round = ?) "
            "AND required_reviewers <> ? "
            "RETURNING id", [n, round, round, n]).fetchall())
        log_event(con, actor, "queue.required_reviewers", {"n": n, "round": round, "comparisons": changed})
        return changed

    return write(db, work)


def set_priority(db: str | Path, priority: float, actor: str, round: int | None = None,
                 comparison_ids: list[int] | None = None) -> int:
    """Set the priority of the listed comparisons, or of a round's; returns how many rows it touched."""
    if round is None and not comparison_ids:
        raise ValueError("name a round or some comparison ids")

    def work(con: duckdb.DuckDBPyConnection) -> int:
        rows = con.execute(
            "UPDATE comparisons SET priority = ? WHERE (CAST(? AS INTEGER) IS NULL OR round = ?) "
            "AND (CAST(? AS BIGINT[]) IS NULL OR id = ANY(CAST(? AS BIGINT[]))) RETURNING id",
            [float(priority), round, round, comparison_ids, comparison_ids or []]).fetchall()
        log_event(con, actor, "queue.priority", {"priority": priority, "round": round,
                                                 "comparison_ids": comparison_ids, "comparisons": len(rows)})
        return len(rows)

    return write(db, work)
