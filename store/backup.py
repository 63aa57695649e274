"""A consistent copy of the workspace database while others keep writing, and the check that a copy is sound.

`copy_database` holds the file for one unit of work (the same lock retry as every other writer): it records the
backup in the audit log, then copies every table, sequence, index, constraint and view with DuckDB's
`COPY FROM DATABASE` inside one transaction, so the copy is the database as of one instant: every transaction
committed before it began is in it, none that committed later is half in it. An encrypted database is copied
encrypted, under the same key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb

from store.audit import log_event, record_event
from store.db import _sql_string, attach_encrypted, connection, encryption_key, is_encrypted, read, transaction
from store.dialect import is_pg_error, redacted
from store.migrations import SCHEMA_VERSION, lock_migrations, migrate, migrate_in, schema_version

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


# ---------------------------------------------------------------------------------------------------------------
# Between backends (docs/postgresql.md, section 7): a backup is always a DuckDB file; PostgreSQL is copied into one
# from a single REPEATABLE READ snapshot, and restored from one in a single transaction. Both sides are checked by
# per-table content hashes computed the same way on both engines (`table_hashes`).

_BATCH = 10_000
# The key each table is copied in (its primary key); any other table is copied in the order of all its columns.
_KEYS = {"response_scores": ("response_id", "model_id"), "settings": ("key",), "gold_answers": ("comparison_id",),
         "schema_migrations": ("version",)}
_INT_KEYED = ("response_scores", "gold_answers", "schema_migrations")
# queue_state.changes is PostgreSQL's database-wide change counter (store.db.lock_queue), unused on DuckDB, where it
# stays 0: a backup writes it as 0 (what a DuckDB workspace holds), and a restore into PostgreSQL sets it past the
# target's previous value so that every server's queue caches rebuild. It is not content, so not part of the hash.
_COUNTER = ("queue_state", "changes")
_ARROW_SCALARS = {"BIGINT": "int64", "INTEGER": "int32", "SMALLINT": "int16", "BOOLEAN": "bool_", "DOUBLE": "float64",
                  "FLOAT": "float32", "VARCHAR": "string", "JSON": "string"}


def tables(con: Any) -> list[str]:
    """The workspace's tables on either backend, by name."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema IN ('main', 'public') "
        "AND table_type = 'BASE TABLE' AND table_catalog = current_database() ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def columns(con: Any, table: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema IN ('main', 'public') "
        "AND table_name = ? AND table_catalog = current_database() ORDER BY ordinal_position", [table]).fetchall()
    return [r[0] for r in rows]


def _quoted(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _order(table: str, cols: list[str]) -> str:
    key = ("id",) if "id" in cols else _KEYS.get(table, tuple(cols))
    return _quoted(key)


def _normal(value: Any) -> Any:
    """A value as both engines give it, in one spelling: JSON is its text (PostgreSQL's `json` keeps it byte for
    byte, as DuckDB does), timestamps ISO text to the microsecond, doubles their repr, arrays lists."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, (date, time, Decimal, UUID)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    return repr(value)


class _Hasher:
    """sha256 of a table: its sorted column names, then one line per row (values normalized, columns in name order),
    the rows in the order of an integer key (read in that order: constant memory), or sorted (tables keyed by text,
    whose order depends on the collation: small)."""

    def __init__(self, table: str, cols: list[str]) -> None:
        self.table = table
        self.cols = cols
        self.order = sorted(range(len(cols)), key=lambda i: cols[i])
        self.skip = cols.index(_COUNTER[1]) if table == _COUNTER[0] and _COUNTER[1] in cols else None
        self.sorts = _sorts(table, cols)
        self.lines: list[str] = []
        self.rows = 0
        self.h = hashlib.sha256(json.dumps(sorted(cols)).encode())

    def add(self, rows: list[tuple]) -> None:
        for row in rows:
            line = json.dumps([None if i == self.skip else _normal(row[i]) for i in self.order], ensure_ascii=False)
            self.rows += 1
            if self.sorts:
                self.lines.append(line)
            else:
                self.h.update(b"\n")
                self.h.update(line.encode())

    def result(self) -> dict[str, Any]:
        for line in sorted(self.lines):
            self.h.update(b"\n")
            self.h.update(line.encode())
        self.lines = []
        return {"rows": self.rows, "sha256": self.h.hexdigest()}


def _sorts(table: str, cols: list[str]) -> bool:
    """Whether a table's rows are sorted in memory for its hash (no integer key to read them in)."""
    return "id" not in cols and table not in _INT_KEYED


def _hash_table(con: Any, table: str) -> dict[str, Any]:
    cols = columns(con, table)
    hasher = _Hasher(table, cols)
    order = "" if hasher.sorts else f" ORDER BY {_order(table, cols)}"
    res = con.execute(f'SELECT {_quoted(cols)} FROM "{table}"{order}')
    while batch := res.fetchmany(_BATCH):
        hasher.add(batch)
    return hasher.result()


def table_hashes(con: Any) -> dict[str, dict[str, Any]]:
    """{table: {"rows": n, "sha256": hex}} of every table, the same on DuckDB and PostgreSQL for the same content."""
    return {t: _hash_table(con, t) for t in tables(con)}


def database_hashes(db: str | Path) -> dict[str, dict[str, Any]]:
    """`table_hashes` of a workspace database (a DuckDB file or a PostgreSQL URL)."""
    return read(db, table_hashes)


def file_hashes(db: str | Path) -> dict[str, dict[str, Any]]:
    """`table_hashes` of a DuckDB file that no workspace process writes (a backup), on a connection of its own."""
    con = _open_file(Path(db))
    try:
        return table_hashes(con)
    finally:
        con.close()


def compare_hashes(want: dict[str, dict[str, Any]], have: dict[str, dict[str, Any]], where: str) -> None:
    """Raise ValueError naming every table whose count or content differs from `want`."""
    bad = []
    for t in sorted(set(want) | set(have)):
        w, h = want.get(t), have.get(t)
        if w is None or h is None:
            bad.append(f"{t}: {'missing' if h is None else 'not in the backup'}")
        elif w["rows"] != h["rows"]:
            bad.append(f"{t}: {h['rows']} rows, expected {w['rows']}")
        elif w["sha256"] != h["sha256"]:
            bad.append(f"{t}: content differs ({w['rows']} rows)")
    if bad:
        raise ValueError(f"{where}: does not match the backup: " + "; ".join(bad))


def _arrow_type(duck_type: str):  # noqa: ANN202 - a pyarrow DataType
    import pyarrow as pa

    if duck_type.endswith("[]"):
        inner = _arrow_type(duck_type[:-2])
        return None if inner is None else pa.list_(inner)
    if duck_type == "TIMESTAMP":
        return pa.timestamp("us")
    name = _ARROW_SCALARS.get(duck_type)
    return getattr(pa, name)() if name else None


def _duck_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = ? AND table_catalog = current_database()", [table]).fetchall())


def _insert_duck(con: duckdb.DuckDBPyConnection, table: str, cols: list[str], types: dict[str, str],
                 rows: list[tuple]) -> None:
    import pyarrow as pa

    arrays = []
    for i, c in enumerate(cols):
        values = [r[i] for r in rows]
        arrays.append(pa.array(values, type=_arrow_type(types[c])))
    frame = pa.Table.from_arrays(arrays, names=cols)
    con.register("rankloop_restore_batch", frame)
    try:
        con.execute(f'INSERT INTO "{table}" ({_quoted(cols)}) SELECT {_quoted(cols)} FROM rankloop_restore_batch')
    finally:
        con.unregister("rankloop_restore_batch")


def _sequence_tables(names: list[str], table_names: list[str]) -> dict[str, str]:
    """{sequence: table} for the `<table>_id` sequences (the only ones the schema has)."""
    return {s: s[:-3] for s in names if s.endswith("_id") and s[:-3] in table_names}


def _max_id(con: Any, table: str) -> int:
    return int(con.execute(f'SELECT coalesce(max(id), 0) FROM "{table}"').fetchone()[0])


def _pg_sequences(con: Any) -> dict[str, int]:
    """{sequence: the last value it handed out (0 if none)} on PostgreSQL."""
    names = [r[0] for r in con.execute("SELECT sequence_name FROM information_schema.sequences "
                                       "WHERE sequence_schema = 'public' ORDER BY 1").fetchall()]
    used = {}
    for s in names:
        last, called = con.execute(f'SELECT last_value, is_called FROM "{s}"').fetchone()
        used[s] = int(last) if called else int(last) - 1
    return used


def _duck_sequences(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = con.execute("SELECT sequence_name, last_value FROM duckdb_sequences() "
                       "WHERE database_name = current_database()").fetchall()
    return {s: int(last or 0) for s, last in rows}


def backup_postgres(url: str, dest: str | Path, actor: str, label: str | None = None) -> dict[str, Any]:
    """Copy the PostgreSQL database `url` into the new DuckDB file `dest`, consistent as of one instant (one
    REPEATABLE READ READ ONLY transaction); returns {"tables": counts, "hashes": table hashes, "sequences": next
    ids}. The file is made by the same migrations, every table copied in key order, every sequence restarted past
    both its table's highest id and the last value it handed out on PostgreSQL. The copy is read back and its hashes
    compared with those of the rows read from the snapshot before this returns."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists")
    record_event(url, actor, "workspace.backup", {"to": label or str(dest)})
    migrate(dest)
    source: dict[str, dict[str, Any]] = {}
    nexts: dict[str, int] = {}

    def copy(pg: Any) -> None:
        pg.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            names = tables(pg)  # the first statement takes the snapshot
            with transaction(dest) as duck:
                missing = sorted(set(names) - set(tables(duck)))
                if missing:
                    raise ValueError(f"{redacted(url)}: tables this rankloop's schema does not have: {missing}")
                for t in names:
                    source[t] = _copy_pg_table(pg, duck, t)
                used = _pg_sequences(pg)
                for s, t in _sequence_tables(sorted(used), names).items():
                    nexts[s] = max(used[s], _max_id(pg, t)) + 1
                    duck.execute(f"CREATE OR REPLACE SEQUENCE {s} START {nexts[s]}")
        finally:
            pg.execute("COMMIT")

    try:
        try:
            read(url, copy)
        except Exception as e:
            if is_pg_error(e):
                raise ValueError(f"{redacted(url)}: the backup failed ({type(e).__name__}: {e})") from e
            raise
        copied = file_hashes(dest)
        compare_hashes(source, {t: h for t, h in copied.items() if t in source}, str(dest))
    except BaseException:
        dest.unlink(missing_ok=True)
        Path(f"{dest}.wal").unlink(missing_ok=True)
        raise
    return {"tables": {t: h["rows"] for t, h in copied.items()}, "hashes": copied, "sequences": nexts}


def _copy_pg_table(pg: Any, duck: duckdb.DuckDBPyConnection, table: str) -> dict[str, Any]:
    cols = columns(pg, table)
    types = _duck_types(duck, table)
    unknown = [c for c in cols if c not in types]
    if unknown:
        raise ValueError(f"{table}: columns this rankloop's schema does not have: {unknown}")
    hasher = _Hasher(table, cols)
    duck.execute(f'DELETE FROM "{table}"')  # rows the migrations wrote (schema_migrations, queue_state)
    counter = cols.index(_COUNTER[1]) if table == _COUNTER[0] else None
    with pg.raw.cursor(name=f"rankloop_backup_{table}") as cur:  # server side: streamed, not held in memory
        cur.itersize = _BATCH
        cur.execute(f'SELECT {_quoted(cols)} FROM "{table}" ORDER BY {_order(table, cols)}')
        while rows := cur.fetchmany(_BATCH):
            if counter is not None:
                rows = [(*r[:counter], 0, *r[counter + 1:]) for r in rows]
            hasher.add(rows)
            _insert_duck(duck, table, cols, types, rows)
    return hasher.result()


def _open_file(db: Path) -> duckdb.DuckDBPyConnection:
    return attach_encrypted(db, encryption_key(required_for=db)) if is_encrypted(db) else \
        duckdb.connect(str(db), read_only=True)


def restore_postgres(src: str | Path, url: str, want: dict[str, dict[str, Any]] | None = None,
                     force: bool = False) -> dict[str, Any]:
    """Copy the backup's DuckDB file `src` into the PostgreSQL database `url` in one transaction: a failure at any
    step (a non-empty target without `force`, a check that fails) leaves the database as it was.

    The target is empty, or migrated with no rows; with `force`, its tables are emptied (TRUNCATE). It is migrated
    to the backup's schema version, every table copied (COPY FROM STDIN), its counts and content hashes compared with
    `want` (backup.json's; else the file's own), the later migrations applied, and every sequence set past both its
    table's highest id and the last value the backup's sequence handed out. Returns {"schema_version", "tables",
    "sequences"}."""
    src = Path(src)
    duck = _open_file(src)
    try:
        version = schema_version(duck)
        if want is None:
            want = table_hashes(duck)
        names = tables(duck)
        used = _duck_sequences(duck)

        def work(pg: Any) -> dict[str, Any]:
            lock_migrations(pg)
            have = _target_state(pg, url, force)
            if have > version:
                raise ValueError(
                    f"{redacted(url)}: the database is at schema version {have}, the backup at {version}: restore "
                    "into an empty database, or first restore the backup into a DuckDB folder (which upgrades it) "
                    "and back that up")
            migrate_in(pg, have, version)
            existing = set(tables(pg))
            missing = sorted(set(names) - existing)
            if missing:
                raise ValueError(f"{redacted(url)}: no tables {missing} after migrating to version {version}")
            before = _counter(pg)
            pg.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in names))
            for t in names:
                _copy_to_pg(duck, pg, t)
            compare_hashes(want, {t: _hash_table(pg, t) for t in names}, redacted(url))
            migrate_in(pg, version, SCHEMA_VERSION)
            if before is not None:
                pg.execute("UPDATE queue_state SET changes = greatest(changes, ?) + 1", [before])
            nexts = {}
            for s, t in _sequence_tables(sorted(_pg_sequences(pg)), sorted(existing)).items():
                nexts[s] = max(used.get(s, 0), _max_id(pg, t)) + 1
                pg.execute("SELECT setval(?, ?, false)", [s, nexts[s]])
            return {"schema_version": version, "tables": {t: want[t]["rows"] for t in names if t in want},
                    "sequences": nexts}

        return _in_transaction(url, work)
    finally:
        duck.close()


def _in_transaction(url: str, work: Any) -> dict[str, Any]:
    try:
        with transaction(url, migration=True) as pg:
            return work(pg)
    except Exception as e:
        if is_pg_error(e):
            raise ValueError(f"{redacted(url)}: the restore failed and was rolled back, the database is as it was "
                             f"({type(e).__name__}: {e})") from e
        raise


def _target_state(pg: Any, url: str, force: bool) -> int:
    """The target's schema version (0 when it has no schema yet); refuses one holding rows unless `force`."""
    names = tables(pg)
    if not names:
        return 0
    if "schema_migrations" not in names:
        raise ValueError(f"{redacted(url)}: holds tables {names[:5]} but is not a rankloop database; restore into "
                         "an empty database")
    held = {}
    for t in names:
        if t in ("schema_migrations", "queue_state"):
            continue
        (n,) = pg.execute(f'SELECT count(*) FROM "{t}"').fetchone()
        if n:
            held[t] = int(n)
    if held and not force:
        what = ", ".join(f"{t}: {n}" for t, n in sorted(held.items()))
        raise FileExistsError(f"{redacted(url)}: not empty ({what} rows); pass --force to replace what is there "
                              "with the backup")
    return schema_version(pg)


def _counter(pg: Any) -> int | None:
    if "queue_state" not in tables(pg):
        return None
    row = pg.execute("SELECT max(changes) FROM queue_state").fetchone()
    return int(row[0] or 0)


def _copy_to_pg(duck: duckdb.DuckDBPyConnection, pg: Any, table: str) -> None:
    cols = columns(duck, table)
    res = duck.execute(f'SELECT {_quoted(cols)} FROM "{table}" ORDER BY {_order(table, cols)}')
    with pg.raw.cursor().copy(f'COPY "{table}" ({_quoted(cols)}) FROM STDIN') as copy:
        while batch := res.fetchmany(_BATCH):
            for row in batch:
                copy.write_row(row)
