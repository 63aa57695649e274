"""The reviewer's queue: which comparison to show next, held under a lease; submit, skip and undo.

- A comparison needs `required_reviewers` distinct reviewers with a counted judgment (see store.judgments).
  Open, unexpired leases hold a slot, so concurrent reviewers do not overfill it; an expired lease or a skip
  gives the slot back. Nobody is offered a comparison they already judged or skipped, or one that holds a
  response they wrote themselves (a response whose `params` carry `edited_by_reviewer_id`).
- Order: round (oldest first), then priority (highest first), then age (oldest first), then id.
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

from store.audit import log_event
from store.db import read, write
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


_OPEN = "l.closed_at IS NULL AND l.expires_at > current_localtimestamp()"
_ORDER = "ORDER BY round, priority DESC, created_at, id LIMIT 1"
# One pass over the queue for one reviewer: what is left for them, the next regular item, the next gold item.
_QUEUE = f"""
    WITH done AS (
        SELECT comparison_id, count(DISTINCT reviewer_id) AS n FROM judgments j WHERE {counted('j')} GROUP BY 1),
    held AS (SELECT comparison_id, count(*) AS n FROM leases l WHERE {_OPEN} GROUP BY 1),
    mine AS (SELECT DISTINCT comparison_id FROM judgments WHERE reviewer_id = $r AND retracted_at IS NULL),
    own AS (SELECT coalesce(list(id), []) AS ids FROM responses
            WHERE json_extract_string(params, '$.edited_by_reviewer_id') = CAST($r AS VARCHAR)),
    cand AS MATERIALIZED (
        SELECT c.id, c.round, c.priority, c.created_at, c.required_reviewers AS needed, coalesce(done.n, 0) AS d,
               coalesce(held.n, 0) AS h, g.comparison_id IS NOT NULL AS gold
        FROM comparisons c
        LEFT JOIN done ON done.comparison_id = c.id LEFT JOIN held ON held.comparison_id = c.id
        LEFT JOIN gold_answers g ON g.comparison_id = c.id
        WHERE c.id NOT IN (SELECT comparison_id FROM mine) AND NOT list_has_any(c.response_ids, (SELECT ids FROM own))
          AND ($round IS NULL OR c.round = $round))
    SELECT (SELECT count(*) FROM cand WHERE NOT gold AND d < needed),
           (SELECT id FROM cand WHERE NOT gold AND d + h < needed {_ORDER}),
           (SELECT id FROM cand WHERE gold {_ORDER})
"""


# The query above aggregates every judgment on every call (20+ ms with 100k judgments). Almost all comparisons
# are complete, and a complete one stays complete while judgments are only added, so each process keeps the open
# comparisons (fewer distinct counted reviewers than required) per database, with their reviewers and what orders
# them, and checks the cache against a fingerprint read in the caller's transaction: judgments (rows, highest id,
# retractions) and comparisons (rows, highest id, sum of N, and the sum of a hash of id, round, priority and N per
# row; a sum, not a bit_xor: DuckDB's multi-column hash XORs the last column in, so a bit_xor cancels out when an
# even number of rows change N alike). New judgments (ids above the cached highest, as many as the row count grew)
# are added in place; anything else (an undo, new comparisons, a new N or priority, rows that appeared below the
# highest id) rebuilds it. The cache is never used without that check; the next item is then picked from it with
# small queries (the reviewer's own judgments and responses, open leases, gold items).
_FINGERPRINT = """
    SELECT (SELECT path FROM duckdb_databases() WHERE database_name = current_database()), j.*, c.*
    FROM (SELECT count(*), coalesce(max(id), 0), count(retracted_at) FROM judgments) j,
         (SELECT count(*), coalesce(max(id), 0), coalesce(sum(required_reviewers), 0),
                 coalesce(sum(hash(id, round, priority, required_reviewers)), 0) FROM comparisons) c
"""
_OPEN_SET = f"""
    SELECT c.id, any_value(c.round), any_value(c.priority), any_value(c.created_at), any_value(c.required_reviewers),
           any_value(c.response_ids), list(DISTINCT j.reviewer_id) FILTER (WHERE j.reviewer_id IS NOT NULL)
    FROM comparisons c LEFT JOIN judgments j ON j.comparison_id = c.id AND {counted('j')}
    GROUP BY c.id HAVING count(DISTINCT j.reviewer_id) < any_value(c.required_reviewers)
"""
_OWN = "SELECT id FROM responses WHERE json_extract_string(params, '$.edited_by_reviewer_id') = CAST(? AS VARCHAR)"
_OPEN_CACHE_MAX = 20_000  # more open comparisons than this: the query above instead of a loop over them here


@dataclass
class _Comparison:
    round: int
    needed: int
    response_ids: frozenset[int]
    reviewers: frozenset[int]  # distinct reviewers with a counted judgment of it


@dataclass
class _OpenSet:
    fingerprint: tuple  # (database path; judgments: rows, max id, retracted; comparisons: rows, max id, N, hash)
    open: dict[int, _Comparison]
    order: list[int]  # the open ids in queue order (round, priority desc, age, id)


_open_sets: dict[str, _OpenSet] = {}
_open_sets_lock = threading.Lock()


def _open_set(con: duckdb.DuckDBPyConnection) -> _OpenSet:
    """The open comparisons as of the caller's transaction (from the cache when its fingerprint still holds)."""
    fp = tuple(con.execute(_FINGERPRINT).fetchone())
    path, jrows, _, jretracted, *cfp = fp
    with _open_sets_lock:
        cached = _open_sets.get(path)
    if cached is not None and cached.fingerprint == fp:
        return cached
    fresh = None
    if cached is not None and list(cached.fingerprint[4:]) == cfp and cached.fingerprint[3] == jretracted \
            and jrows >= cached.fingerprint[1]:
        new = con.execute(f"SELECT comparison_id, reviewer_id, {counted('j')} FROM judgments j WHERE id > ?",
                          [cached.fingerprint[2]]).fetchall()
        if len(new) == jrows - cached.fingerprint[1]:  # only additions, all above the highest id seen
            still_open = dict(cached.open)
            for cid, rid, is_counted in new:
                c = still_open.get(cid)
                if is_counted and c is not None and rid not in c.reviewers:
                    c = _Comparison(c.round, c.needed, c.response_ids, c.reviewers | {rid})
                    if len(c.reviewers) >= c.needed:
                        del still_open[cid]
                    else:
                        still_open[cid] = c
            order = cached.order if len(still_open) == len(cached.open) else [
                cid for cid in cached.order if cid in still_open]
            fresh = _OpenSet(fp, still_open, order)
    if fresh is None:
        rows = con.execute(_OPEN_SET).fetchall()
        rows.sort(key=lambda r: (r[1], -r[2], r[3], r[0]))
        fresh = _OpenSet(fp, {cid: _Comparison(rnd, int(n), frozenset(rids), frozenset(who or []))
                              for cid, rnd, _, _, n, rids, who in rows}, [r[0] for r in rows])
    with _open_sets_lock:
        _open_sets[path] = fresh
    return fresh


def _queue_state(con: duckdb.DuckDBPyConnection, reviewer_id: int,
                 round: int | None = None) -> tuple[int, int | None, int | None]:
    """(comparisons still open to the reviewer, next regular id, next gold id); only `round`'s when given."""
    open_set = _open_set(con)
    if len(open_set.open) > _OPEN_CACHE_MAX:
        remaining, regular, gold = con.execute(_QUEUE, {"r": reviewer_id, "round": round}).fetchone()
        return int(remaining), regular, gold
    mine = {cid for (cid,) in con.execute(
        "SELECT comparison_id FROM judgments WHERE reviewer_id = ? AND retracted_at IS NULL", [reviewer_id]
    ).fetchall()}
    own = {rid for (rid,) in con.execute(_OWN, [reviewer_id]).fetchall()}
    held = dict(con.execute(f"SELECT comparison_id, count(*) FROM leases l WHERE {_OPEN} GROUP BY 1").fetchall())
    golds = con.execute(
        "SELECT c.id, c.round, c.response_ids FROM gold_answers g JOIN comparisons c ON c.id = g.comparison_id "
        "ORDER BY c.round, c.priority DESC, c.created_at, c.id").fetchall()
    gold_ids = {cid for cid, _, _ in golds}

    def offered(cid: int, rnd: int, response_ids) -> bool:
        return cid not in mine and (round is None or rnd == round) and not (own and own.intersection(response_ids))

    remaining, regular = 0, None
    for cid in open_set.order:
        c = open_set.open[cid]
        if cid in gold_ids or not offered(cid, c.round, c.response_ids):
            continue
        remaining += 1
        if regular is None and len(c.reviewers) + held.get(cid, 0) < c.needed:
            regular = cid
    gold = next((cid for cid, rnd, rids in golds if offered(cid, rnd, rids)), None)
    return remaining, regular, gold


def _progress(con: duckdb.DuckDBPyConnection, reviewer_id: int, remaining: int) -> dict[str, int]:
    today, total = con.execute(
        "SELECT count(*) FILTER (WHERE created_at >= current_date), count(*) "
        f"FROM judgments j WHERE reviewer_id = ? AND {counted('j')}",
        [reviewer_id],
    ).fetchone()
    return {"done_today": int(today), "total": int(total), "remaining": remaining}


def progress_in(con: duckdb.DuckDBPyConnection, reviewer_id: int) -> dict[str, int]:
    """Done today, done in total (counted judgments), and comparisons still open to this reviewer."""
    return _progress(con, reviewer_id, _queue_state(con, reviewer_id)[0])


def _load_item(con: duckdb.DuckDBPyConnection, lease_id: int, progress: dict[str, int]) -> Item:
    row = con.execute(
        "SELECT l.reviewer_id, c.id, c.round, c.response_ids, p.messages, "
        "c.id IN (SELECT comparison_id FROM gold_answers), l.draft "
        "FROM leases l JOIN comparisons c ON c.id = l.comparison_id JOIN prompts p ON p.id = c.prompt_id "
        "WHERE l.id = ?",
        [lease_id],
    ).fetchone()
    reviewer_id, cid, rnd, response_ids, messages, gold, draft = row
    texts = dict(con.execute(
        "SELECT id, text FROM responses WHERE id IN (SELECT unnest(?))", [list(response_ids)]).fetchall())
    order = display_order(reviewer_id, cid, list(response_ids))
    return Item(lease_id, cid, rnd, json.loads(messages), [(r, texts[r]) for r in order], bool(gold), progress,
                json.loads(draft) if draft else None)


def _new_lease(con: duckdb.DuckDBPyConnection, reviewer_id: int, comparison_id: int, minutes: int) -> int:
    (lid,) = con.execute("SELECT nextval('leases_id')").fetchone()
    con.execute(
        "INSERT INTO leases (id, comparison_id, reviewer_id, leased_at, expires_at) VALUES "
        "(?, ?, ?, current_localtimestamp(), current_localtimestamp() + to_minutes(?))",
        [lid, comparison_id, reviewer_id, int(minutes)],
    )
    return int(lid)


def _wants_gold(con: duckdb.DuckDBPyConnection, reviewer_id: int, rate: float) -> bool:
    if rate <= 0:
        return False
    total, gold = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE comparison_id IN (SELECT comparison_id FROM gold_answers)) "
        f"FROM judgments j WHERE reviewer_id = ? AND {counted('j')}",
        [reviewer_id],
    ).fetchone()
    return math.floor(rate * (total + 1)) > gold


def next_item_in(con: duckdb.DuckDBPyConnection, reviewer_id: int, round: int | None = None) -> Item | None:
    """The reviewer's open lease if they hold one, else a new lease on the next comparison (inside a transaction).

    With `round`, only that round's comparisons are handed out (simulated reviewers working one round).
    """
    con.execute(
        "UPDATE leases SET closed_at = current_localtimestamp(), outcome = 'expired' "
        "WHERE closed_at IS NULL AND expires_at <= current_localtimestamp()"
    )
    held = con.execute(
        f"SELECT id FROM leases l WHERE reviewer_id = ? AND {_OPEN} ORDER BY id DESC LIMIT 1", [reviewer_id]
    ).fetchone()
    remaining, regular, gold = _queue_state(con, reviewer_id, round)
    progress = _progress(con, reviewer_id, remaining)
    if held:
        return _load_item(con, held[0], progress)
    s = settings_in(con)
    pick = gold if gold is not None and _wants_gold(con, reviewer_id, s["gold_rate"]) else regular
    if pick is None:
        return None
    return _load_item(con, _new_lease(con, reviewer_id, pick, s["lease_minutes"]), progress)


def next_item(db: str | Path, reviewer_id: int, round: int | None = None) -> Item | None:
    """What to show this reviewer now (None when their queue is empty); the item stays leased to them."""
    with _lease_lock:
        return write(db, lambda con: next_item_in(con, reviewer_id, round))


def _record(con: duckdb.DuckDBPyConnection, lease_id: int, reviewer_id: int, reviewer: str, answer: Answer,
            skipped: bool, source: str = "app") -> int:
    lease = con.execute(
        "SELECT l.comparison_id, l.reviewer_id, c.response_ids, l.outcome, r.active FROM leases l "
        "JOIN comparisons c ON c.id = l.comparison_id JOIN reviewers r ON r.id = l.reviewer_id WHERE l.id = ?",
        [lease_id],
    ).fetchone()
    if lease is None or lease[1] != reviewer_id:
        raise ValueError(f"lease {lease_id} is not yours")
    if not lease[4]:
        raise ValueError("this account is deactivated")
    cid, _, response_ids, outcome, _ = lease
    key = f"{source}:{reviewer_id}:{cid}:{lease_id}"
    found = con.execute("SELECT id FROM judgments WHERE idempotency_key = ?", [key]).fetchone()
    if found:
        return int(found[0])  # a retried submit: stored once
    if outcome == "released":
        raise ValueError("this item was given back to the queue; it is no longer yours to answer")
    if con.execute(
        "SELECT 1 FROM judgments WHERE reviewer_id = ? AND comparison_id = ? AND retracted_at IS NULL",
        [reviewer_id, cid],
    ).fetchone():
        raise AlreadyJudged(f"you already judged comparison {cid}")
    jid = insert_judgment(con, NewJudgment(
        comparison_id=cid, reviewer=reviewer, idempotency_key=key,
        ranking=None if skipped else answer.ranking, all_bad=False if skipped else answer.all_bad, skipped=skipped,
        flags=list(answer.flags), edited_text=answer.edited_text or None, rationale=answer.rationale or None,
        display_order=display_order(reviewer_id, cid, list(response_ids)), time_spent_ms=answer.time_spent_ms,
        source=source,
    ))
    con.execute(
        "UPDATE leases SET closed_at = current_localtimestamp(), outcome = ?, judgment_id = ? WHERE id = ?",
        ["skipped" if skipped else "submitted", jid, lease_id],
    )
    return jid


def submit(db: str | Path, lease_id: int, reviewer_id: int, reviewer: str, answer: Answer,
           skipped: bool = False) -> int:
    """Store the reviewer's answer for the leased comparison; returns the judgment id once committed."""
    return write(db, lambda con: _record(con, lease_id, reviewer_id, reviewer, answer, skipped))


def submit_and_next(db: str | Path, lease_id: int, reviewer_id: int, reviewer: str, answer: Answer,
                    skipped: bool = False, *, source: str = "app",
                    round: int | None = None) -> tuple[int, Item | None]:
    """Submit (or skip) and lease the next item in one transaction: the judgment id and what to show next.

    `source` marks where the judgment came from ('app'; 'simulated' for rankloop simulate) and prefixes its
    idempotency key; `round` limits the next item to one round.
    """

    def work(con: duckdb.DuckDBPyConnection) -> tuple[int, Item | None]:
        jid = _record(con, lease_id, reviewer_id, reviewer, answer, skipped, source)
        return jid, next_item_in(con, reviewer_id, round)

    with _lease_lock:
        return write(db, work)


def undo(db: str | Path, judgment_id: int, reviewer_id: int, reviewer: str,
         release_lease_id: int | None = None) -> Item:
    """Retract the reviewer's judgment (within the undo window) and hand the comparison back to them.

    The lease they held on their next item, if any, is released so that item returns to the queue.
    """

    def work(con: duckdb.DuckDBPyConnection) -> Item:
        s = settings_in(con)
        cid = retract_judgment(con, judgment_id, reviewer_id, reviewer, s["undo_window_s"])
        if release_lease_id is not None:
            con.execute(
                "UPDATE leases SET closed_at = current_localtimestamp(), outcome = 'released' "
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
        "UPDATE leases SET draft = ?, updated_at = current_localtimestamp() "
        "WHERE id = ? AND reviewer_id = ? AND closed_at IS NULL RETURNING id",
        [None if draft is None else json.dumps(draft), lease_id, reviewer_id]).fetchall())


def save_draft(db: str | Path, lease_id: int, reviewer_id: int, draft: dict[str, Any] | None) -> bool:
    """Keep the reviewer's half-made answer with their open lease (False when the lease is no longer open).

    `draft`: {"ranks": {response id: rank}, "all_bad", "flags", "rationale", "edited_text"}; None forgets it.
    A reload, a lost connection or a server restart hands the lease back with it (`Item.draft`).
    """
    for name in MAX_TEXT_CHARS:  # what the judgment would refuse is not kept either: ValueError naming it
        check_text(name, (draft or {}).get(name))
    return write(db, lambda con: _put_draft(con, lease_id, reviewer_id, draft))


def release(db: str | Path, lease_id: int, reviewer_id: int) -> None:
    """Give a lease back unanswered (logout): the comparison returns to the queue at once."""
    write(db, lambda con: con.execute(
        "UPDATE leases SET closed_at = current_localtimestamp(), outcome = 'released' "
        "WHERE id = ? AND reviewer_id = ? AND closed_at IS NULL", [lease_id, reviewer_id]))


def release_reviewer_leases(con: duckdb.DuckDBPyConnection, reviewer_id: int) -> int:
    """Give back every open lease of a reviewer (their last session ended); returns how many."""
    return len(con.execute(
        "UPDATE leases SET closed_at = current_localtimestamp(), outcome = 'released' "
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
        row = con.execute(
            "UPDATE leases SET closed_at = current_localtimestamp(), outcome = 'released' "
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
            "UPDATE comparisons SET required_reviewers = ? WHERE (? IS NULL OR round = ?) AND required_reviewers <> ? "
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
            "UPDATE comparisons SET priority = ? WHERE (? IS NULL OR round = ?) "
            "AND (? IS NULL OR id IN (SELECT unnest(?))) RETURNING id",
            [float(priority), round, round, comparison_ids, comparison_ids or []]).fetchall()
        log_event(con, actor, "queue.priority", {"priority": priority, "round": round,
                                                 "comparison_ids": comparison_ids, "comparisons": len(rows)})
        return len(rows)

    return write(db, work)
