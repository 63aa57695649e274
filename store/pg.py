"""PostgreSQL connections that the store uses as it uses DuckDB's: `execute(sql, params)` with `?` placeholders,
`fetchone`/`fetchall`/`df`, and `register(name, frame)` for a pandas frame a statement reads.

One `psycopg_pool.ConnectionPool` per database URL per process (a forked job runner makes its own), in autocommit
mode: `store.db` writes `BEGIN`/`COMMIT` itself, exactly as it does on DuckDB. Values come back as DuckDB returns
them: `json` as its text (the store calls `json.loads` itself, and text keeps the bytes that content hashes
read), `numeric` (PostgreSQL's `sum` of a BIGINT) as an int when whole, else a float. Only `store.db` imports
this module; psycopg is needed only for a PostgreSQL workspace (`pip install 'rankloop[postgresql]'`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.adapt import Loader
    from psycopg.types.string import TextLoader
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as e:  # pragma: no cover - a DuckDB-only install
    raise ImportError(
        "a PostgreSQL workspace needs psycopg 3 and psycopg_pool: pip install 'rankloop[postgresql]'"
    ) from e

from store.dialect import pg_params, redacted

APP_POOL_SIZE = 16  # rankloop serve: one connection per unit of work running at once (Streamlit's threads)
CLI_POOL_SIZE = 4  # CLI commands and jobs: a unit of work may read through a second connection inside another


class _NumericAsNumber(Loader):
    """`numeric` as DuckDB returns HUGEINT/DOUBLE sums: an int when whole, else a float (never a Decimal)."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class Result:
    """The rows of one statement, read the way DuckDB's connection reads them."""

    def __init__(self, cur: psycopg.Cursor) -> None:
        self._cur = cur

    @property
    def description(self) -> Any:
        return self._cur.description

    def fetchone(self) -> tuple | None:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[tuple]:
        return self._cur.fetchall() if self._cur.description else []

    def fetchmany(self, size: int = 1) -> list[tuple]:
        return self._cur.fetchmany(size) if self._cur.description else []

    def df(self) -> pd.DataFrame:
        columns = [d.name for d in self._cur.description or []]
        return pd.DataFrame(self.fetchall(), columns=columns)

    fetchdf = df


def _column_type(values: pd.Series) -> str:
    kind = values.dtype.kind
    if kind == "b":
        return "BOOLEAN"
    if kind in "iu":
        return "BIGINT"
    if kind == "f":
        return "DOUBLE PRECISION"
    if kind == "M":
        return "TIMESTAMP"
    sample = next((v for v in values if v is not None and not (isinstance(v, float) and v != v)), None)
    if isinstance(sample, bool):
        return "BOOLEAN"
    if isinstance(sample, int):
        return "BIGINT"
    if isinstance(sample, float):
        return "DOUBLE PRECISION"
    if isinstance(sample, (list, tuple)) or hasattr(sample, "tolist"):
        items = list(sample)
        return "BIGINT[]" if items and all(isinstance(x, int) for x in items) else "TEXT[]"
    return "TEXT"


def _plain(value: Any) -> Any:
    """A frame cell as psycopg adapts it: numpy scalars and arrays as Python values, NaN/NaT as NULL."""
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


class Connection:
    """A pooled psycopg connection with DuckDB's calling conventions (see the module's doc)."""

    backend = "postgresql"

    def __init__(self, raw: psycopg.Connection, url: str = "postgresql") -> None:
        self.raw = raw
        self.url = url  # the database's URL (for labels, never shown with a password)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Result:
        cur = self.raw.cursor()
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(pg_params(sql), [_plain(p) for p in params])
        return Result(cur)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Result:
        cur = self.raw.cursor()
        cur.executemany(pg_params(sql), [[_plain(v) for v in row] for row in rows])
        return Result(cur)

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Make `frame` readable as the table `name` for this connection (a temporary table, filled by COPY)."""
        if not name.isidentifier():
            raise ValueError(f"{name!r}: not a table name")
        columns = [str(c) for c in frame.columns]
        types = [_column_type(frame[c]) for c in frame.columns]
        cols = ", ".join(f'"{c}" {t}' for c, t in zip(columns, types, strict=True))
        self.raw.execute(f'DROP TABLE IF EXISTS "{name}"')
        self.raw.execute(f'CREATE TEMPORARY TABLE "{name}" ({cols})')
        names = ", ".join(f'"{c}"' for c in columns)
        with self.raw.cursor().copy(f'COPY "{name}" ({names}) FROM STDIN') as copy:
            for row in frame.itertuples(index=False, name=None):
                copy.write_row([_plain(v) for v in row])

    def unregister(self, name: str) -> None:
        self.raw.execute(f'DROP TABLE IF EXISTS "{name}"')

    def cursor(self) -> Connection:
        return self

    def close(self) -> None:
        """Nothing: the pool takes the connection back when the unit of work ends."""


def _local_utc_offset() -> str:
    seconds = -time.altzone if time.daylight and time.localtime().tm_isdst > 0 else -time.timezone
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _configure(raw: psycopg.Connection) -> None:
    raw.adapters.register_loader("json", TextLoader)
    raw.adapters.register_loader("jsonb", TextLoader)
    raw.adapters.register_loader("numeric", _NumericAsNumber)
    # TIMESTAMP columns hold local time, as DuckDB's `current_timestamp` defaults and `localtimestamp` give them.
    raw.execute(f"SET TIME ZONE INTERVAL '{_local_utc_offset()}' HOUR TO MINUTE")
    raw.execute(f"SET application_name = 'rankloop-{os.getpid()}'")
    raw.execute("SET lock_timeout = '60s'")


_pools: dict[tuple[str, int], ConnectionPool] = {}
_pools_lock = threading.Lock()


def pool_for(url: str, size: int) -> ConnectionPool:
    """This process's pool for `url` (made on first use; a forked child makes its own)."""
    key = (url, os.getpid())
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            try:  # first a plain connection: a wrong name or a refused login fails at once, with libpq's reason
                psycopg.connect(url, connect_timeout=10).close()
            except psycopg.OperationalError as e:
                raise ConnectionError(f"{redacted(url)}: cannot connect to the PostgreSQL database: "
                                      f"{str(e).strip()}") from e
            pool = ConnectionPool(
                url, min_size=1, max_size=size, kwargs={"autocommit": True}, configure=_configure,
                check=ConnectionPool.check_connection, open=False, name=f"rankloop-{os.getpid()}",
                timeout=60.0,
            )
            try:
                pool.open(wait=True, timeout=30.0)
            except PoolTimeout as e:
                pool.close()
                raise ConnectionError(f"{redacted(url)}: cannot connect to the PostgreSQL database ({e})") from e
            _pools[key] = pool
        return pool


def close_pool(url: str) -> None:
    """Close this process's pool for `url`, if any (a test dropping its database; a restore replacing it)."""
    with _pools_lock:
        pool = _pools.pop((url, os.getpid()), None)
    if pool is not None:
        pool.close()


@contextmanager
def connect(url: str, size: int) -> Iterator[Connection]:
    """A connection from the pool for one unit of work; a broken one is replaced, never handed out again."""
    try:
        with pool_for(url, size).connection() as raw:
            yield Connection(raw, url)
    except PoolTimeout as e:
        raise ConnectionError(f"{redacted(url)}: no database connection free within 60 s ({e})") from e


def is_retryable(e: BaseException) -> bool:
    """A serialization failure or a deadlock: the transaction may simply be run again."""
    return isinstance(e, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected))
