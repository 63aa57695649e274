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


def open_connection(path: str | Path, timeout_s: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open `path` read-write, retrying with backoff while another process holds it."""
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    attempt = 0
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
