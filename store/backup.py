"""A consistent copy of the workspace database while others keep writing, and the check that a copy is sound.

`copy_database` holds the file for one unit of work (the same lock retry as every other writer): it records the
backup in the audit log, then copies every table, sequence, index, constraint and view with DuckDB's
`COPY FROM DATABASE` inside one transaction, so the copy is the database as of one instant: every transaction
committed before it began is in it, none that committed later is half in it. An encrypted database is copied
encrypted, under the same key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from store.audit import log_event
from store.db import _sql_string, attach_encrypted, connection, encryption_key, is_encrypted
from store.migrations import SCHEMA_VERSION, schema_version

_COPY = "rankloop_backup"


def _table_counts(con: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    names = [n for (n,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1", [catalog]).fetchall()]
    return {n: int(con.execute(f'SELECT count(*) FROM "{catalog}".main."{n}"').fetchone()[0]) for n in names}


def copy_database(db: str | Path, dest: str | Path, actor: str, label: str | None = None) -> dict[str, Any]:
    """Copy the database `db` into the new file `dest`, consistent as of one instant; returns table row counts.

    The audit log records the backup (under `label`, default `dest`) in the source and so in the copy."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists")
    key = encryption_key(required_for=db) if is_encrypted(db) else None
    with connection(db) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            log_event(con, actor, "workspace.backup", {"to": label or str(dest)})
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        (src,) = con.execute("SELECT current_database()").fetchone()
        options = f" (ENCRYPTION_KEY {_sql_string(key)})" if key else ""
        con.execute(f"ATTACH {_sql_string(str(dest))} AS {_COPY}{options}")
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f'COPY FROM DATABASE "{src}" TO {_COPY}')
                counts = _table_counts(con, _COPY)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.execute(f"DETACH {_COPY}")
    return counts


def check_database(db: str | Path) -> dict[str, Any]:
    """Open a copy on its own (not shared with any writer) and read every row of every table, which makes DuckDB
    verify each block's checksum; returns its schema version and row counts. Raises ValueError when it is not
    a rankloop database this version can open."""
    db = Path(db)
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no database file")
    try:
        con = attach_encrypted(db, encryption_key(required_for=db)) if is_encrypted(db) else duckdb.connect(str(db))
    except duckdb.Error as e:
        raise ValueError(f"{db}: not a DuckDB database this version can open ({e})") from e
    try:
        (catalog,) = con.execute("SELECT current_database()").fetchone()
        if not con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'schema_migrations'").fetchone():
            raise ValueError(f"{db}: not a rankloop database (no schema_migrations table)")
        version = schema_version(con)
        if version > SCHEMA_VERSION:
            raise ValueError(f"{db}: schema version {version} is newer than this rankloop's ({SCHEMA_VERSION}); "
                             "upgrade rankloop to restore it")
        for name in _table_counts(con, catalog):  # a full read: every block's checksum is verified
            con.execute(f'SELECT bit_xor(hash(t)) FROM "{name}" AS t').fetchone()
        return {"schema_version": version, "tables": _table_counts(con, catalog)}
    except duckdb.Error as e:
        raise ValueError(f"{db}: the database is damaged ({e})") from e
    finally:
        con.close()
