"""Opening the workspace database: one connection per unit of work, retried while another process holds the file.

DuckDB lets one process hold a database file read-write at a time. The app and CLI jobs share a workspace by
holding a connection only for a unit of work (open, transact, close). When another process holds the lock,
`connect` retries with exponential backoff and, after a bounded wait, raises `WorkspaceBusy` with a message that
says which file and for how long it waited.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

T = TypeVar("T")

DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked")
_CONFLICT_MARKERS = ("Conflict", "conflict")


class WorkspaceBusy(RuntimeError):
    """Another process held the database file for longer than the bounded wait."""


def lock_timeout_s() -> float:
    """The bounded wait for a lock held by another process (env `RANKLOOP_LOCK_TIMEOUT`, seconds)."""
    raw = os.environ.get("RANKLOOP_LOCK_TIMEOUT")
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError as e:
        raise ValueError(f"RANKLOOP_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from e
    if value < 0:
        raise ValueError(f"RANKLOOP_LOCK_TIMEOUT must be >= 0, got {raw!r}")
    return value


def _is_lock_error(e: Exception) -> bool:
    return isinstance(e, duckdb.IOException) and any(m in str(e) for m in _LOCK_MARKERS)


def _backoff(attempt: int) -> float:
    return min(0.5, 0.01 * 2**attempt) * (0.5 + random.random())


def open_connection(path: str | Path, timeout_s: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open `path` read-write, retrying with backoff while another process holds it."""
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.Error as e:
            if not _is_lock_error(e):
                raise
            if time.monotonic() >= deadline:
                raise WorkspaceBusy(
                    f"{path}: another process has held the workspace database for {timeout:.0f}s "
                    f"(raise RANKLOOP_LOCK_TIMEOUT to wait longer). DuckDB said: {e}"
                ) from e
            time.sleep(_backoff(attempt))
            attempt += 1


@contextmanager
def connection(path: str | Path, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for one unit of work; closed (and the file lock released) when the block ends."""
    con = open_connection(path, timeout_s)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(path: str | Path, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open, BEGIN, yield, COMMIT (ROLLBACK on any error), close: every write that belongs together."""
    with connection(path, timeout_s) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")


def write(path: str | Path, work: Callable[[duckdb.DuckDBPyConnection], T], retries: int = 8) -> T:
    """Run `work(con)` in one transaction, re-running it when a concurrent transaction in this process conflicts."""
    for attempt in range(retries + 1):
        try:
            with transaction(path) as con:
                return work(con)
        except duckdb.TransactionException as e:
            if attempt == retries or not any(m in str(e) for m in _CONFLICT_MARKERS):
                raise
            time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def read(path: str | Path, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Run a read-only `work(con)` on a connection held just for it."""
    with connection(path) as con:
        return work(con)
