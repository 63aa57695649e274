"""Opening the workspace database: one connection per unit of work, retried while another process holds the file.

DuckDB lets one process hold a database file read-write at a time. The app and CLI jobs share a workspace by
holding a connection only for a unit of work (open, transact, close). When another process holds the lock,
`connect` retries with exponential backoff and, after a bounded wait, raises `WorkspaceBusy` with a message that
says which file and for how long it waited.

An encrypted workspace (`rankloop init --encrypt`) is a DuckDB file encrypted by DuckDB itself (AES-GCM). Its
header says so; every connection to it attaches the file with the key from $RANKLOOP_KEY or the file named by
$RANKLOOP_KEY_FILE, which never lives in the workspace. DuckDB 2 writes encrypted files only with OpenSSL, which
the `httpfs` extension brings: it is loaded when installed; otherwise the connection is refused unless
$RANKLOOP_UNSAFE_CRYPTO=1 allows DuckDB's built-in mbedtls, which DuckDB itself calls not securely encrypted
(its nonces do not come from a cryptographic random generator). Unencrypted files open exactly as before.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

import duckdb

from store.dialect import is_pg_error, is_postgres, on_postgres, redacted

T = TypeVar("T")

DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked")
_CONFLICT_MARKERS = ("Conflict", "conflict")


KEY_ENV = "RANKLOOP_KEY"
KEY_FILE_ENV = "RANKLOOP_KEY_FILE"
UNSAFE_CRYPTO_ENV = "RANKLOOP_UNSAFE_CRYPTO"
_ALIAS = "workspace"


class WorkspaceBusy(RuntimeError):
    """Another process held the database file for longer than the bounded wait."""


class EncryptionError(ValueError):
    """An encrypted workspace without its key, with a wrong key, or without a crypto module that can write."""


# DuckDB locks the database file with POSIX fcntl locks, which belong to the process: closing *any* descriptor
# of the file drops them all. Peeking at the header with open()/close() while another thread of this process (the
# app serves many sessions) holds a connection would release that connection's lock and let a second process write
# the file at the same time ("No more data remaining in MetadataReader", a WAL that no longer matches). So the
# header is read once per file (device, inode), when this process first opens it, and remembered.
_encrypted_files: dict[tuple[int, int], bool] = {}


def is_encrypted(path: str | Path) -> bool:
    """Whether the DuckDB file at `path` is encrypted (flag bit 0 of its main header); False for no or other files."""
    try:
        st = os.stat(path)
        known = _encrypted_files.get((st.st_dev, st.st_ino))
        if known is not None:
            return known
        with open(path, "rb") as f:
            head = f.read(28)
    except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError):
        return False
    if len(head) < 28 or head[8:12] != b"DUCK":
        return False  # not (yet) a DuckDB file: not remembered
    _encrypted_files[(st.st_dev, st.st_ino)] = encrypted = bool(head[20] & 1)
    return encrypted


def encryption_key(required_for: str | Path | None = None) -> str | None:
    """The key from $RANKLOOP_KEY, else from the file $RANKLOOP_KEY_FILE names; None when neither is set.

    With `required_for` (the database that needs it), a missing key is an `EncryptionError` naming that file.
    """
    key = os.environ.get(KEY_ENV)
    if not key and os.environ.get(KEY_FILE_ENV):
        key_file = Path(os.environ[KEY_FILE_ENV])
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise EncryptionError(f"{KEY_FILE_ENV}={key_file}: cannot read the key file ({e})") from e
        if not key:
            raise EncryptionError(f"{KEY_FILE_ENV}={key_file}: the key file is empty")
    if key and ("\0" in key or len(key) < 8):
        raise EncryptionError(f"{KEY_ENV}: the key must be at least 8 characters, without NUL bytes")
    if not key and required_for is not None:
        raise EncryptionError(
            f"{required_for}: the workspace database is encrypted; set {KEY_ENV} to its key "
            f"(or {KEY_FILE_ENV} to a file holding it)"
        )
    return key or None


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _load_crypto(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """OpenSSL through httpfs when installed; DuckDB's mbedtls only when $RANKLOOP_UNSAFE_CRYPTO=1 allows it."""
    try:
        con.execute("LOAD httpfs")
        return
    except duckdb.Error:
        pass
    if os.environ.get(UNSAFE_CRYPTO_ENV) == "1":
        con.execute("SET force_mbedtls_unsafe = true")
        return
    raise EncryptionError(
        f"{path}: writing an encrypted DuckDB file needs OpenSSL from DuckDB's httpfs extension, which is not "
        f"installed (run `INSTALL httpfs` once in duckdb with network access), or set {UNSAFE_CRYPTO_ENV}=1 to "
        "accept DuckDB's built-in mbedtls, which DuckDB says is not securely encrypted"
    )


def attach_encrypted(path: str | Path, key: str) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the encrypted file at `path` attached under `key` and made the default."""
    con = duckdb.connect(":memory:")
    try:
        _load_crypto(con, path)
        con.execute(f"ATTACH {_sql_string(str(path))} AS {_ALIAS} (ENCRYPTION_KEY {_sql_string(key)})")
        con.execute(f"USE {_ALIAS}")
    except duckdb.InvalidInputException as e:
        con.close()
        if "encryption key" in str(e).lower():
            raise EncryptionError(f"{path}: wrong encryption key ({KEY_ENV} / {KEY_FILE_ENV}); DuckDB: {e}") from e
        raise
    except BaseException:
        con.close()
        raise
    return con


def _connect(path: str | Path) -> duckdb.DuckDBPyConnection:
    if is_encrypted(path):
        return attach_encrypted(path, encryption_key(required_for=path))  # type: ignore[arg-type]
    try:
        return duckdb.connect(str(path))
    except duckdb.CatalogException as e:
        if "encrypted" in str(e):
            raise EncryptionError(f"{path}: the workspace database is encrypted; set {KEY_ENV}") from e
        raise


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


def _wait_dir(path: str | Path) -> Path:
    """The folder next to the database where processes waiting for it leave one marker file each (named by PID)."""
    return Path(f"{path}.waiting")


def _mark_waiting(path: str | Path) -> Path | None:
    """Say 'this process wants the file' to a process that keeps it open (see `hold`); None if it cannot."""
    marker = _wait_dir(path) / str(os.getpid())
    try:
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
    except OSError:  # a read-only folder, or the folder removed by another waiter at this instant: retried
        return None
    return marker


def _unmark_waiting(marker: Path | None) -> None:
    if marker is None:
        return
    try:
        marker.unlink(missing_ok=True)
        marker.parent.rmdir()  # only when no other process waits
    except OSError:
        pass


def _someone_waits(path: str | Path) -> bool:
    """Whether another process left a marker (a stat() of the folder: no descriptor of the database is opened)."""
    return os.path.isdir(_wait_dir(path))


def _drop_stale_markers(path: str | Path) -> None:
    """Remove markers of processes that died while waiting (killed), so the holder does not yield to nobody."""
    try:
        names = os.listdir(_wait_dir(path))
    except OSError:
        return
    for name in names:
        try:
            os.kill(int(name), 0)
            continue
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        _unmark_waiting(_wait_dir(path) / name)


def open_connection(path: str | Path, timeout_s: float | None = None, *,
                    mark: bool = True) -> duckdb.DuckDBPyConnection:
    """Open `path` read-write, retrying with backoff while another process holds it.

    While it waits it leaves a marker next to the database (`mark`), which tells a process that keeps the file
    open between units of work (`rankloop serve`, see `hold`) to give it up at the end of its current one; the
    retries are then frequent, so the hand-over takes milliseconds.
    """
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    attempt = 0
    marker: Path | None = None
    try:
        while True:
            try:
                return _connect(path)
            except duckdb.Error as e:
                if not _is_lock_error(e):
                    raise
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"{path}: another process has held the workspace database for {timeout:.0f}s "
                        f"(raise RANKLOOP_LOCK_TIMEOUT to wait longer). DuckDB said: {e}"
                    ) from e
                if mark and (marker is None or not marker.exists()):
                    marker = _mark_waiting(path)
                time.sleep(min(_backoff(attempt), 0.02) if mark else _backoff(attempt))
                attempt += 1
    finally:
        _unmark_waiting(marker)


# --- Keeping the database open in a long-lived process (the app server) -------------------------------------------
#
# Opening a DuckDB file, and the checkpoint when the last connection closes, cost tens of milliseconds: more than
# the work of a click. A process that calls `hold()` (`rankloop serve` does, through $RANKLOOP_DB_HOLD) keeps one
# DuckDB instance per database open and gives every unit of work its own cursor on it. Other processes (CLI
# commands, jobs) still open the file per unit of work; when one finds it locked, it leaves a marker (above) and
# the holder, which checks for markers with a stat() at the start of every unit and every few milliseconds in a
# watcher thread, lets the running units finish, closes its instance, and waits until the marker is gone (the
# other process got the file) before opening it again. The holder never opens a descriptor of the database file
# itself while it holds it (see `is_encrypted` above), and reopens when the path names another file (a restore).

HOLD_ENV = "RANKLOOP_DB_HOLD"
_YIELD_WAIT_S = 5.0  # how long a holder that gave the file up waits for the waiter to take it before reopening
_WATCH_PERIOD_S = 0.005  # how often a unit of work waiting on a hand-over looks again
_IDLE_WATCH_S = 0.02  # how often the watcher thread looks for waiters while this process is idle


def _file_id(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Held:
    """One database kept open by this process: the instance, its users, and the rules for giving it up."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.cond = threading.Condition()
        self.con: duckdb.DuckDBPyConnection | None = None
        self.file: tuple[int, int] | None = None
        self.encrypted = False
        self.active = 0  # units of work running on a cursor of `con`
        self.broken = False  # a fatal DuckDB error: reopen once the running units are done
        self.opens = 0  # how many times the instance was opened (tests read it)
        # Commits that may change what the queue caches (see `transaction`): counted under `commit_lock`.
        self.commit_lock = threading.Lock()
        self.changes = 0

    def _close(self) -> None:
        if self.con is not None:
            try:
                self.con.close()
            finally:
                self.con, self.file, self.broken = None, None, False

    def _give_up_if_asked(self, deadline: float) -> None:
        """Called with `cond` held: while another process waits, let running units end, close, and wait for it."""
        if not _someone_waits(self.path):
            return
        _drop_stale_markers(self.path)
        until = min(deadline, time.monotonic() + _YIELD_WAIT_S)
        while _someone_waits(self.path) and time.monotonic() < until:
            if self.active == 0:
                self._close()
            self.cond.wait(_WATCH_PERIOD_S)

    def enter(self, timeout_s: float | None) -> duckdb.DuckDBPyConnection:
        timeout = lock_timeout_s() if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        with self.cond:
            self._give_up_if_asked(deadline)
            if self.con is not None and (self.broken or _file_id(self.path) != self.file):
                while self.active:  # another file now has this path (a restore), or the instance failed
                    self.cond.wait(_WATCH_PERIOD_S)
                if self.con is not None:
                    self._close()
            if self.con is None:
                self.con = open_connection(self.path, max(0.0, deadline - time.monotonic()))
                self.file = _file_id(self.path)
                self.encrypted = is_encrypted(self.path)
                self.opens += 1
                _watcher.start()
            cur = self.con.cursor()
            self.active += 1
        try:
            if self.encrypted:
                cur.execute(f"USE {_ALIAS}")
        except BaseException:
            self.leave(cur, None)
            raise
        return cur

    def leave(self, cur: duckdb.DuckDBPyConnection, error: BaseException | None) -> None:
        try:
            cur.close()
        finally:
            with self.cond:
                self.active -= 1
                if isinstance(error, duckdb.FatalException) or "invalidated" in str(error or ""):
                    self.broken = True
                if self.active == 0 and (self.broken or _someone_waits(self.path)):
                    self._close()
                self.cond.notify_all()

    def idle_check(self) -> None:
        """From the watcher thread: give the file up at once when a process waits and no unit is running."""
        with self.cond:
            if self.con is not None and self.active == 0 and _someone_waits(self.path):
                self._close()
                self.cond.notify_all()


class _Watcher:
    """One daemon thread that notices waiting processes while this process holds a database but is idle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rankloop-db-watcher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_IDLE_WATCH_S)
            for held in list(_held.values()):
                held.idle_check()


_held: dict[str, _Held] = {}
_held_lock = threading.Lock()
_watcher = _Watcher()
_hold_all = os.environ.pop(HOLD_ENV, None) == "1"  # popped: processes this one starts (jobs) open per unit


def hold(on: bool = True) -> None:
    """Keep databases open in this process between units of work (on), or go back to one open per unit (off).

    Turning it off closes every instance held now (waiting for their running units)."""
    global _hold_all
    _hold_all = on
    if not on:
        release_all()


def holding() -> bool:
    return _hold_all


def release(path: str | Path) -> None:
    """Let go of `path`: close this process's pool for a PostgreSQL URL (before its database is dropped or
    replaced); for a DuckDB file nothing (see `release_all`)."""
    if is_postgres(path):
        _pg().close_pool(str(path))


def release_all() -> None:
    """Close every database this process keeps open, once its running units are done (tests; shutdown)."""
    for held in list(_held.values()):
        with held.cond:
            while held.active:
                held.cond.wait(_WATCH_PERIOD_S)
            held._close()


def _held_for(path: str | Path) -> _Held:
    key = os.path.abspath(path)
    with _held_lock:
        held = _held.get(key)
        if held is None:
            held = _held[key] = _Held(key)
        return held


@contextmanager
def connection(path: str | Path, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for one unit of work: closed (and the file lock released) when the block ends, or, in a
    process that holds the database (`hold`), a cursor on the instance it keeps open. What it writes counts as a
    change to what the queue caches (see `queue_label`)."""
    with _connection(path, timeout_s, counted=True) as con:
        yield con


def _pg():  # noqa: ANN202 - store.pg imports psycopg, needed only for a PostgreSQL workspace
    from store import pg

    return pg


def _pool_size() -> int:
    pg = _pg()
    return pg.APP_POOL_SIZE if _hold_all else pg.CLI_POOL_SIZE


# On PostgreSQL every process writes at once, so what one process counted above must live in the database: the
# one row of `queue_state` (migration 6). The queue's transactions lock it first (`lock_queue`) and read its
# `changes`; every other transaction that wrote anything bumps it before its COMMIT. Its row lock also serializes
# the queue's decisions across servers, as `_lease_lock` and DuckDB's file lock do in one process.
_LOCK_QUEUE = "SELECT changes FROM queue_state WHERE id = 1 FOR UPDATE"
_BUMP_ALWAYS = "UPDATE queue_state SET changes = changes + 1 WHERE id = 1"
_BUMP = _BUMP_ALWAYS + " AND pg_current_xact_id_if_assigned() IS NOT NULL"  # only a transaction that wrote


def lock_queue(con: duckdb.DuckDBPyConnection) -> int | None:
    """Take the queue's lock on PostgreSQL (the row of `queue_state`, held to the end of the transaction) and
    return the database-wide count of changes; on DuckDB nothing (the file lock and `_lease_lock` serialize)."""
    if not on_postgres(con):
        return None
    row = con.execute(_LOCK_QUEUE).fetchone()
    if row is None:
        raise RuntimeError("queue_state has no row: the PostgreSQL database is not migrated (rankloop migrate)")
    return int(row[0])


@contextmanager
def _pg_connection(url: str, counted: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    with _pg().connect(url, _pool_size()) as con:
        yield con  # type: ignore[misc]
        if counted:  # autocommit statements: what they wrote is committed; say so to the queues
            con.execute(_BUMP_ALWAYS)


@contextmanager
def _connection(path: str | Path, timeout_s: float | None, counted: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    if is_postgres(path):
        with _pg_connection(str(path), counted) as con:
            yield con
        return
    if _hold_all:
        held = _held_for(path)
        cur = held.enter(timeout_s)
        error: BaseException | None = None
        try:
            yield cur
        except BaseException as e:
            error = e
            raise
        finally:
            if counted:
                with held.commit_lock:
                    held.changes += 1
            held.leave(cur, error)
        return
    con = open_connection(path, timeout_s)
    try:
        yield con
    finally:
        con.close()


# A long-lived process that holds the database sees every write to it: its own transactions, and other processes'
# only across a hand-over, which reopens the instance. So it can tell whether anything the queue caches (store.
# queue_cache) may have changed since a snapshot without reading the tables: a transaction that promises to change
# none of it except by appending judgments (`keeps_queue_cache`: the queue's submit, lease and draft writes) does
# not count; every other commit, and every rollback, does. The queue's transaction takes its snapshot and reads the
# count under the same lock the counted commits hold, so the label (path, instance opens, changes) names exactly the
# counted commits its snapshot holds. Outside such a process (one open per unit of work) there is no label, and
# the queue checks a fingerprint of the tables instead.
_label: ContextVar[tuple[str, int, int] | None] = ContextVar("rankloop_queue_label", default=None)


def change_count(path: str | Path) -> tuple[int, int] | None:
    """(instance opens, counted commits) of `path` in a process that holds it, else None: a value read before a
    read that is equal later means nothing but the queue's own kind of writes (see `transaction`) happened."""
    if is_postgres(path):
        row = read(path, lambda con: con.execute("SELECT changes FROM queue_state WHERE id = 1").fetchone())
        return (_pg_rollbacks, int(row[0])) if row else None
    if not _hold_all:
        return None
    held = _held.get(os.path.abspath(path))
    if held is None or held.con is None:
        return None
    with held.commit_lock:
        return held.opens, held.changes


def queue_label() -> tuple[str, int, int] | None:
    """(database path, instance opens, counted commits) of the current `keeps_queue_cache` transaction in a
    holding process; None elsewhere."""
    return _label.get()


def _finish(con: duckdb.DuckDBPyConnection, statement: str, held: _Held | None, counted: bool) -> None:
    if held is None:
        con.execute(statement)
        return
    with held.commit_lock:
        try:
            con.execute(statement)
        finally:
            if counted:
                held.changes += 1


@contextmanager
def transaction(path: str | Path, timeout_s: float | None = None, *, keeps_queue_cache: bool = False,
                migration: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN, yield, COMMIT (ROLLBACK on any error) on a connection for one unit of work: writes that belong
    together. `keeps_queue_cache`: the work changes nothing the queue caches except by appending judgments (see
    `queue_label`); leave it False when in doubt (a False only costs the queue a rebuild). `migration`: a schema
    change (store.migrations), which on PostgreSQL bumps no counter: `queue_state` may not exist yet, and a
    process that runs against a migrated database checked the version when it started."""
    if is_postgres(path):
        with _pg_transaction(str(path), keeps_queue_cache, bump=not migration) as con:
            yield con
        return
    with _connection(path, timeout_s, counted=False) as con:
        held = _held.get(os.path.abspath(path)) if _hold_all else None
        label = None
        if held is None:
            con.execute("BEGIN TRANSACTION")
        else:
            with held.commit_lock:
                con.execute("BEGIN TRANSACTION")
                if keeps_queue_cache:  # DuckDB starts the snapshot at the first read: take it under the lock
                    con.execute("SELECT count(*) FROM schema_migrations").fetchone()
                    label = (held.path, held.opens, held.changes)
        token = _label.set(label)
        try:
            yield con
        except BaseException:
            _finish(con, "ROLLBACK", held, counted=True)
            raise
        finally:
            _label.reset(token)
        _finish(con, "COMMIT", held, counted=not keeps_queue_cache)


# A rollback on PostgreSQL bumps no counter, but the queue may have cached, under the transaction's label, a
# judgment the rollback undid: every rollback in this process moves `_pg_rollbacks` on (before the ROLLBACK, while
# the queue's lock is still held), and it is part of every label this process makes.
_pg_rollbacks = 0


def _pg_label(url: str, changes: int) -> tuple[str, int, int]:
    return redacted(url), _pg_rollbacks, changes


def pg_label(con: duckdb.DuckDBPyConnection) -> tuple[str, int, int] | None:
    """For a queue read inside a PostgreSQL transaction that did not start labelled (not `keeps_queue_cache`):
    take the queue's lock now and return a label (a cache made under it is never reused: the transaction will
    bump the counter or roll back). None on DuckDB."""
    changes = lock_queue(con)
    return None if changes is None else _pg_label(getattr(con, "url", "postgresql"), changes)


@contextmanager
def _pg_transaction(url: str, keeps_queue_cache: bool, bump: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """READ COMMITTED: the queue's lock is its first statement, and what it reads after the wait must be the
    latest committed state (docs/postgresql.md, section 5)."""
    global _pg_rollbacks
    with _pg_connection(url, counted=False) as con:
        con.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        label = None
        try:
            if keeps_queue_cache:
                label = _pg_label(url, lock_queue(con))  # type: ignore[arg-type]
            token = _label.set(label)
            try:
                yield con
            finally:
                _label.reset(token)
            if bump and not keeps_queue_cache:
                con.execute(_BUMP)
        except BaseException:
            _pg_rollbacks += 1
            try:
                con.execute("ROLLBACK")
            except Exception:  # a broken connection: the pool discards it, the server rolls back
                pass
            raise
        con.execute("COMMIT")


def _retryable(e: BaseException) -> bool:
    if isinstance(e, duckdb.TransactionException):
        return any(m in str(e) for m in _CONFLICT_MARKERS)
    return is_pg_error(e) and _pg().is_retryable(e)


def write(path: str | Path, work: Callable[[duckdb.DuckDBPyConnection], T], retries: int = 8, *,
          keeps_queue_cache: bool = False) -> T:
    """Run `work(con)` in one transaction, re-running it when a concurrent transaction in this process conflicts.
    `keeps_queue_cache`: see `transaction`."""
    for attempt in range(retries + 1):
        try:
            with transaction(path, keeps_queue_cache=keeps_queue_cache) as con:
                return work(con)
        except Exception as e:
            if attempt == retries or not _retryable(e):
                raise
            time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def read(path: str | Path, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Run a read-only `work(con)` on a connection held just for it."""
    with _connection(path, None, counted=False) as con:
        return work(con)
