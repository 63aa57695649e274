"""What the queue remembers between transactions: the open comparisons, each reviewer's judgments, gold, settings.

Picking a reviewer's next item from the tables aggregates every judgment (20+ ms with 100k of them, and more for
a reviewer with thousands). Almost every comparison is complete, and a complete one stays complete while
judgments are only added, so each process keeps, per database:

- the open comparisons (fewer distinct counted reviewers than required) in queue order, with their reviewers,
  responses and prompt;
- per reviewer who asked: the comparisons they have a live judgment of (skips included) and their counted
  judgments per day and comparison (their progress, and how many gold items they answered);
- in a process that holds the database (`rankloop serve`): the gold comparisons, the settings and the responses a
  reviewer wrote themselves (edits).

The cache is used only once it is known to match the caller's transaction:
- in a holding process, by the transaction's label (store.db.queue_label): the instance's opens and the count of
  commits that may change any of the above; the queue's own writes (appending judgments, leases, drafts) do not
  count, so a new label means a rebuild and an equal one means only appended judgments to read;
- elsewhere, by a fingerprint read in the caller's transaction: judgments (rows, highest id, retractions) and
  comparisons (rows, highest id, sum of N, and the sum of a hash of id, round, priority and N per row; a sum, not
  a bit_xor: DuckDB's multi-column hash XORs the last column in, so a bit_xor cancels out when an even number of
  rows change N alike). New judgments (ids above the cached highest, as many as the row count grew) are added in
  place; anything else rebuilds. Gold, settings and edits are read every time.

In both cases new judgments are the rows with ids above the cached highest (ids come from a sequence; in a
holding process the queue's writes run one at a time under its lock, and any other write changes the label).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import duckdb

from store.db import pg_label, queue_label
from store.dialect import on_postgres
from store.judgments import counted
from store.settings import settings_in

_FINGERPRINT = """
    SELECT (SELECT path FROM duckdb_databases() WHERE database_name = current_database()), j.*, c.*
    FROM (SELECT count(*), coalesce(max(id), 0), count(retracted_at) FROM judgments) j,
         (SELECT count(*), coalesce(max(id), 0), coalesce(sum(required_reviewers), 0),
                 coalesce(sum(hash(id, round, priority, required_reviewers)), 0) FROM comparisons) c
"""
_OPEN_SET = f"""
    SELECT c.id, c.round, c.priority, c.created_at, c.required_reviewers, c.response_ids, c.prompt_id, d.who
    FROM comparisons c LEFT JOIN (
        SELECT j.comparison_id, count(DISTINCT j.reviewer_id) AS n, array_agg(DISTINCT j.reviewer_id) AS who
        FROM judgments j WHERE {counted('j')} GROUP BY j.comparison_id) d ON d.comparison_id = c.id
    WHERE coalesce(d.n, 0) < c.required_reviewers
"""
_NEW = "SELECT id, comparison_id, reviewer_id, retracted_at IS NULL, skipped, created_at FROM judgments WHERE id > ?"
_REVIEWER = ("SELECT comparison_id, skipped, CAST(created_at AS DATE) FROM judgments "
             "WHERE reviewer_id = ? AND retracted_at IS NULL")
# Queue order (store.queue's doc says why): priority first across rounds, each round of age worth ROUND_STEP of
# priority, then the older round, the older comparison, the lower id. `order_key` is the same order in Python; both
# compute priority - ROUND_STEP * round in binary floating point (ROUND_STEP is a power of two: exact), so they agree.
ROUND_STEP = 0.5
ORDER_SQL = (f"{{c}}priority - {{c}}round * CAST({ROUND_STEP!r} AS DOUBLE PRECISION) DESC, "
             "{c}round, {c}created_at, {c}id")
_GOLD = ("SELECT c.id, c.round, c.response_ids FROM comparisons c "
         "WHERE c.id IN (SELECT comparison_id FROM gold_answers) "
         "ORDER BY " + ORDER_SQL.format(c="c."))


def order_key(comparison_id: int, round: int, priority: float, created_at: Any) -> tuple:
    """A comparison's place in the queue (sort ascending): as ORDER_SQL orders it."""
    return -(float(priority) - round * ROUND_STEP), round, created_at, comparison_id
_OWN = "SELECT id FROM responses WHERE params->>'edited_by_reviewer_id' = CAST(? AS VARCHAR)"


@dataclass(frozen=True)
class Comparison:
    round: int
    needed: int
    response_ids: tuple[int, ...]
    prompt_id: int
    reviewers: frozenset[int]  # distinct reviewers with a counted judgment of it


@dataclass(frozen=True)
class Reviewer:
    live: frozenset[int]  # comparisons they have a live judgment of (skips included): never offered again
    counted: frozenset[int]  # comparisons they have a counted judgment of
    per_day: Counter  # counted judgments per day (date of created_at)

    def progress(self, remaining: int) -> dict[str, int]:
        return {"done_today": int(self.per_day.get(date.today(), 0)), "total": len(self.counted),
                "remaining": remaining}


@dataclass
class Snapshot:
    """The queue's view as of the caller's transaction (do not keep it beyond that transaction)."""
    key: tuple[str, bool]  # (database path, kept by a holding process)
    label: tuple
    max_id: int
    open: dict[int, Comparison]
    order: list[int]  # the open ids in queue order (order_key: priority less ROUND_STEP per round, round, age, id)
    reviewers: dict[int, Reviewer] = field(default_factory=dict)
    extras: dict[Any, Any] = field(default_factory=dict)  # gold, settings, edits, accounts: holding process only

    @property
    def held(self) -> bool:
        return self.key[1]

    def reviewer(self, con: duckdb.DuckDBPyConnection, reviewer_id: int) -> Reviewer:
        r = self.reviewers.get(reviewer_id)
        if r is None:
            rows = con.execute(_REVIEWER, [reviewer_id]).fetchall()
            live = frozenset(cid for cid, _, _ in rows)
            r = Reviewer(live, frozenset(cid for cid, skipped, _ in rows if not skipped),
                         Counter(day for _, skipped, day in rows if not skipped))
            self.reviewers[reviewer_id] = r
        return r

    def _kept(self, key: Any, load):
        if not self.held:
            return load()
        if key not in self.extras:
            self.extras[key] = load()
        return self.extras[key]

    def golds(self, con: duckdb.DuckDBPyConnection) -> list[tuple[int, int, list[int]]]:
        """Gold comparisons in queue order: (id, round, response ids)."""
        return self._kept("gold", lambda: con.execute(_GOLD).fetchall())

    def settings(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        return self._kept("settings", lambda: settings_in(con))

    def active(self, con: duckdb.DuckDBPyConnection, reviewer_id: int) -> bool:
        """Whether the account may still submit (deactivating it is a change that renews a holding process' view)."""
        return self._kept(("active", reviewer_id), lambda: bool((con.execute(
            "SELECT active FROM reviewers WHERE id = ?", [reviewer_id]).fetchone() or [False])[0]))

    def own(self, con: duckdb.DuckDBPyConnection, reviewer_id: int) -> frozenset[int]:
        """Responses the reviewer wrote (edits shown as candidates): never shown to them to judge."""
        return self._kept(("own", reviewer_id),
                          lambda: frozenset(rid for (rid,) in con.execute(_OWN, [reviewer_id]).fetchall()))


_cache: dict[tuple[str, bool], Snapshot] = {}
_cache_lock = threading.Lock()


def snapshot(con: duckdb.DuckDBPyConnection) -> Snapshot:
    """The queue's view as of the caller's transaction: from the cache when it still matches, else rebuilt."""
    label = queue_label()
    if label is None and on_postgres(con):
        # A PostgreSQL transaction that may have changed anything before this read: built, never reused.
        label = pg_label(con)
        return _build(con, (label[0], True), label)
    if label is not None:  # a holding process: the same label means at most judgments appended since
        key: tuple = (label[0], True)
        with _cache_lock:
            cached = _cache.get(key)
        fresh = _with_new_judgments(con, cached, label, None) if cached is not None and cached.label == label \
            else None
        fresh = fresh or _build(con, key, label)
    else:
        path, *fp = con.execute(_FINGERPRINT).fetchone()
        label = tuple(fp)  # judgments: rows, highest id, retracted; comparisons: rows, highest id, N, hash
        key = (path, False)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and cached.label == label:
            return cached
        fresh = None
        if cached is not None and _appended_only(cached.label, label):
            fresh = _with_new_judgments(con, cached, label, label[0] - cached.label[0])
        fresh = fresh or _build(con, key, label)
    if fresh is not cached:
        with _cache_lock:
            _cache[key] = fresh
    return fresh


def _appended_only(old: tuple, new: tuple) -> bool:
    """Whether the only change between two fingerprints can be judgments appended (ids above the highest seen)."""
    return old[3:] == new[3:] and old[2] == new[2] and new[0] >= old[0] and new[1] >= old[1]


def _with_new_judgments(con: duckdb.DuckDBPyConnection, cached: Snapshot, label: tuple,
                        expected: int | None) -> Snapshot | None:
    new = con.execute(_NEW, [cached.max_id]).fetchall()
    if expected is not None and len(new) != expected:
        return None  # rows appeared below the highest id: rebuild
    return _apply(cached, sorted(new), label)


def _apply(cached: Snapshot, new: list[tuple], label: tuple) -> Snapshot:
    """`cached` with the judgments `new` (id, comparison, reviewer, live, skipped, created at) added, in id order."""
    if not new:
        return cached if cached.label == label else replace(cached, label=label)
    still_open = dict(cached.open)
    reviewers = dict(cached.reviewers)
    for _, cid, rid, live, skipped, created in new:
        is_counted = live and not skipped
        c = still_open.get(cid)
        if is_counted and c is not None and rid not in c.reviewers:
            c = replace(c, reviewers=c.reviewers | {rid})
            if len(c.reviewers) >= c.needed:
                del still_open[cid]
            else:
                still_open[cid] = c
        r = reviewers.get(rid)
        if r is not None and live:
            per_day = r.per_day
            if is_counted:
                per_day = per_day.copy()
                per_day[created.date()] += 1
            reviewers[rid] = Reviewer(r.live | {cid}, r.counted | {cid} if is_counted else r.counted, per_day)
    order = cached.order if len(still_open) == len(cached.open) else [c for c in cached.order if c in still_open]
    return Snapshot(cached.key, label, max(cached.max_id, new[-1][0]), still_open, order, reviewers, cached.extras)


def appended(view: Snapshot, judgment_id: int, comparison_id: int, reviewer_id: int, counted: bool) -> Snapshot:
    """The view after the caller's transaction appended one judgment (it goes on to pick the next item with it).

    Kept for the next transaction too: a rollback changes the label (holding process) or the fingerprint."""
    label = view.label
    if not view.held:  # the fingerprint as this transaction now reads it: one more judgment, maybe a new highest id
        label = (label[0] + 1, max(label[1], judgment_id), *label[2:])
    fresh = _apply(view, [(judgment_id, comparison_id, reviewer_id, True, not counted, datetime.now())], label)
    with _cache_lock:
        _cache[view.key] = fresh
    return fresh


def _build(con: duckdb.DuckDBPyConnection, key: tuple[str, bool], label: tuple) -> Snapshot:
    (max_id,) = con.execute("SELECT coalesce(max(id), 0) FROM judgments").fetchone() if key[1] else label[1:2]
    rows = con.execute(_OPEN_SET).fetchall()
    rows.sort(key=lambda r: order_key(r[0], r[1], r[2], r[3]))
    open_ = {cid: Comparison(rnd, int(n), tuple(rids), pid, frozenset(who or []))
             for cid, rnd, _, _, n, rids, pid, who in rows}
    return Snapshot(key, label, int(max_id), open_, [r[0] for r in rows])


def forget() -> None:
    """Drop everything cached (tests)."""
    with _cache_lock:
        _cache.clear()
