"""What differs between the two backends, and nothing else: which backend a database names, the parameter style,
the DDL spellings of released migrations, and how a URL is shown.

A workspace's database is either a DuckDB file (a path) or a PostgreSQL URL (`postgresql://USER@HOST:PORT/DB`,
recorded by `rankloop init --database`). Every store function takes it as `db` and passes it to `store.db`, which
asks `is_postgres(db)`; the SQL in `store/` is written once, in forms both engines run the same (see
docs/postgresql.md), so only the few lines here branch. This module imports no driver: a DuckDB user needs no
psycopg.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(db: str | Path) -> bool:
    """Whether `db` names a PostgreSQL database (a `postgresql://` URL) rather than a DuckDB file."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def on_postgres(con: object) -> bool:
    """Whether a connection `store.db` handed out is PostgreSQL's (store.pg.Connection) rather than DuckDB's."""
    return getattr(con, "backend", "duckdb") == "postgresql"


def is_pg_error(e: BaseException) -> bool:
    """Whether `e` comes from the PostgreSQL driver (psycopg), told by its module: no driver import here."""
    return type(e).__module__.startswith("psycopg")


def redacted(db: str | Path) -> str:
    """`db` as it may be shown in logs, pages and errors: a URL without its password (paths unchanged)."""
    text = str(db)
    if not is_postgres(text):
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f":***@{host}"))


def check_url(url: str) -> str:
    """A PostgreSQL URL as `rankloop init --database` records it, or a ValueError saying what is wrong with it.

    A password in the URL is refused (it would be written to rankloop.toml): libpq reads it from $PGPASSWORD,
    $PGPASSFILE or ~/.pgpass; `sslmode` and other libpq options stay in the URL's query."""
    if not is_postgres(url):
        raise ValueError(f"--database {redacted(url)!r}: expected a URL like postgresql://USER@HOST:PORT/DBNAME")
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError(
            f"--database {redacted(url)}: the URL holds a password, which would be written to rankloop.toml; "
            "leave it out and give it to libpq through PGPASSWORD, PGPASSFILE or ~/.pgpass"
        )
    if not parts.path.strip("/"):
        raise ValueError(f"--database {url}: no database name (postgresql://USER@HOST:PORT/DBNAME)")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        raise ValueError(f"--database {url}: {e}") from e
    return url


_QMARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"])*\"|--[^\n]*|\?|%")


@lru_cache(maxsize=4096)
def pg_params(sql: str) -> str:
    """`sql` with DuckDB's `?` placeholders as psycopg's `%s` (and a literal `%` doubled); quoted text and comments
    are left as they are. Statements are constants, so the rewrite is cached per text."""

    def swap(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        return token if token.startswith('"') else token.replace("%", "%%")

    return _QMARK.sub(swap, sql)


_DDL_REWRITES = (
    (re.compile(r"\bDOUBLE\b(?!\s+PRECISION)"), "DOUBLE PRECISION"),
    (re.compile(r"DEFAULT\s+\[\]"), "DEFAULT '{}'"),
    (re.compile(r"\blen\("), "cardinality("),
)


def pg_ddl(sql: str) -> str:
    """A released migration's DuckDB DDL as PostgreSQL spells it. Released migrations keep their DuckDB text byte
    for byte (DuckDB records a column default as written); these are the only spellings they use that PostgreSQL
    does not (`JSON`, `VARCHAR[]`, `BIGINT[]`, `TIMESTAMP`, sequences and `current_timestamp` are common)."""
    for pattern, replacement in _DDL_REWRITES:
        sql = pattern.sub(replacement, sql)
    return sql
