"""The workspace schema as numbered, named migrations, each recorded in `schema_migrations` once applied.

`migrate(path)` applies the missing ones in order, each in its own transaction: re-running is a no-op and an
older file upgrades in place. Add a migration by appending a function to `MIGRATIONS`; never edit a released one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from store.db import read, transaction
from store.dialect import is_postgres, on_postgres, pg_ddl, redacted

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def m001_initial_schema(con: duckdb.DuckDBPyConnection) -> None:
    for name in ("prompts", "models", "responses", "comparisons", "judgments", "reviewers", "runs", "audit_log"):
        con.execute(f"CREATE SEQUENCE IF NOT EXISTS {name}_id START 1")
    con.execute(
        """
        CREATE TABLE prompts (
            id BIGINT PRIMARY KEY,
            text VARCHAR,               -- the prompt as given, when it was plain text (HH transcripts included)
            messages JSON NOT NULL,     -- chat messages [{"role", "content"}], always present
            content_hash VARCHAR NOT NULL UNIQUE,
            source VARCHAR NOT NULL,
            split VARCHAR NOT NULL DEFAULT 'train',
            tags VARCHAR[] NOT NULL DEFAULT [],
            external_id VARCHAR,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )"""
    )
    con.execute(
        """
        CREATE TABLE models (
            id BIGINT PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            kind VARCHAR NOT NULL CHECK (kind IN ('policy', 'reward', 'external')),
            base VARCHAR,               -- hub id or folder the model starts from
            path VARCHAR,               -- folder with the full weights, when there is one
            adapter_path VARCHAR,       -- LoRA adapter folder, when the model is base + adapter
            parent_id BIGINT,
            round INTEGER,
            run_id BIGINT,
            metrics JSON NOT NULL DEFAULT '{}',
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )"""
    )
    con.execute(
        """
        CREATE TABLE responses (
            id BIGINT PRIMARY KEY,
            prompt_id BIGINT NOT NULL,
            model_id BIGINT,            -- our model that wrote it; NULL for imported or human text
            model_name VARCHAR,         -- the name the source gave the writer, if any
            text VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            params JSON NOT NULL DEFAULT '{}',  -- sampling parameters
            seed BIGINT,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )"""
    )
    con.execute(
        """
        CREATE TABLE comparisons (
            id BIGINT PRIMARY KEY,
            prompt_id BIGINT NOT NULL,
            response_ids BIGINT[] NOT NULL,     -- 2..K responses to rank
            round INTEGER NOT NULL DEFAULT 0,
            required_reviewers INTEGER NOT NULL DEFAULT 1 CHECK (required_reviewers >= 1),
            priority DOUBLE NOT NULL DEFAULT 0,
            source VARCHAR NOT NULL,
            external_id VARCHAR,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            CHECK (len(response_ids) >= 2)
        )"""
    )
    con.execute(
        """
        CREATE TABLE reviewers (
            id BIGINT PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            role VARCHAR NOT NULL CHECK (role IN ('reviewer', 'admin')),
            kind VARCHAR NOT NULL CHECK (kind IN ('human', 'import', 'simulated')),
            password_hash VARCHAR,
            active BOOLEAN NOT NULL DEFAULT true,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )"""
    )
    con.execute(
        """
        CREATE TABLE judgments (
            id BIGINT PRIMARY KEY,
            comparison_id BIGINT NOT NULL,
            reviewer_id BIGINT NOT NULL,
            ranking JSON,               -- ordered groups of response ids, best first; a group of 2+ is a tie
            all_bad BOOLEAN NOT NULL DEFAULT false,
            skipped BOOLEAN NOT NULL DEFAULT false,
            flags VARCHAR[] NOT NULL DEFAULT [],
            edited_text VARCHAR,        -- the reviewer's better answer (SFT gold)
            rationale VARCHAR,
            display_order BIGINT[],     -- response ids in the order they were shown
            time_spent_ms BIGINT,
            idempotency_key VARCHAR NOT NULL UNIQUE,
            source VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )"""
    )
    con.execute(
        """
        CREATE TABLE runs (
            id BIGINT PRIMARY KEY,
            kind VARCHAR NOT NULL,
            config JSON NOT NULL DEFAULT '{}',
            data_snapshot JSON NOT NULL DEFAULT '{}',
            status VARCHAR NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
            metrics JSON NOT NULL DEFAULT '{}',
            output_path VARCHAR,
            error VARCHAR,
            started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            finished_at TIMESTAMP
        )"""
    )
    con.execute(
        """
        CREATE TABLE audit_log (
            id BIGINT PRIMARY KEY,
            logged_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            actor VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            details JSON NOT NULL DEFAULT '{}'
        )"""
    )


def m002_lookup_indexes_and_scores(con: duckdb.DuckDBPyConnection) -> None:
    """Indexes for the queue and export joins, and per-model response scores (filled by `rankloop score`)."""
    con.execute("CREATE INDEX judgments_comparison ON judgments (comparison_id)")
    con.execute("CREATE INDEX responses_prompt ON responses (prompt_id)")
    con.execute("CREATE INDEX comparisons_round ON comparisons (round)")
    con.execute(
        """
        CREATE TABLE response_scores (
            response_id BIGINT NOT NULL,
            model_id BIGINT NOT NULL,
            score DOUBLE NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (response_id, model_id)
        )"""
    )


def m003_annotation_app(con: duckdb.DuckDBPyConnection) -> None:
    """The annotation app: login lockout, sessions, leases, settings, gold answers, and undo as a retraction."""
    con.execute("ALTER TABLE reviewers ADD COLUMN failed_logins INTEGER DEFAULT 0")
    con.execute("ALTER TABLE reviewers ADD COLUMN locked_until TIMESTAMP")
    con.execute("ALTER TABLE reviewers ADD COLUMN last_login_at TIMESTAMP")
    # An undo never deletes: the judgment stays, marked retracted (by whom, when); counted ones have NULL here.
    con.execute("ALTER TABLE judgments ADD COLUMN retracted_at TIMESTAMP")
    con.execute("ALTER TABLE judgments ADD COLUMN retracted_by VARCHAR")
    con.execute("CREATE INDEX judgments_reviewer ON judgments (reviewer_id)")
    for name in ("leases", "sessions"):
        con.execute(f"CREATE SEQUENCE IF NOT EXISTS {name}_id START 1")
    con.execute(
        """
        CREATE TABLE leases (
            id BIGINT PRIMARY KEY,
            comparison_id BIGINT NOT NULL,
            reviewer_id BIGINT NOT NULL,
            leased_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            expires_at TIMESTAMP NOT NULL,
            closed_at TIMESTAMP,        -- NULL while open; an open lease past expires_at no longer holds a slot
            outcome VARCHAR CHECK (outcome IN ('submitted', 'skipped', 'released', 'expired')),
            judgment_id BIGINT
        )"""
    )
    con.execute("CREATE INDEX leases_comparison ON leases (comparison_id)")
    con.execute(
        """
        CREATE TABLE sessions (
            id BIGINT PRIMARY KEY,
            token_hash VARCHAR NOT NULL UNIQUE,  -- sha256 of the token the browser session holds
            reviewer_id BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            last_seen_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            ended_at TIMESTAMP,
            end_reason VARCHAR
        )"""
    )
    con.execute(
        """
        CREATE TABLE settings (
            key VARCHAR PRIMARY KEY,
            value JSON NOT NULL,
            updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            updated_by VARCHAR NOT NULL
        )"""
    )
    con.execute(
        """
        CREATE TABLE gold_answers (
            comparison_id BIGINT PRIMARY KEY,
            ranking JSON,               -- ordered groups of response ids, best first; NULL when all_bad
            all_bad BOOLEAN NOT NULL DEFAULT false,
            note VARCHAR,
            created_by VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )"""
    )


def m004_jobs(con: duckdb.DuckDBPyConnection) -> None:
    """Background jobs launched from the admin pages: a CLI command run by a detached runner process."""
    con.execute("CREATE SEQUENCE IF NOT EXISTS jobs_id START 1")
    con.execute(
        """
        CREATE TABLE jobs (
            id BIGINT PRIMARY KEY,
            command VARCHAR NOT NULL,   -- what the admin picked, e.g. 'train reward'
            argv JSON NOT NULL,         -- the `rankloop` arguments, as a list (never through a shell)
            status VARCHAR NOT NULL CHECK (status IN ('queued', 'starting', 'running', 'succeeded', 'failed',
                                                      'cancelled', 'lost')),
            created_by VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            runner_pid INTEGER,         -- the detached runner (leader of its own process group)
            child_pid INTEGER,          -- the `rankloop` command it runs
            exit_code INTEGER,
            cancel_requested_at TIMESTAMP,
            cancel_requested_by VARCHAR,
            log_path VARCHAR NOT NULL,
            error VARCHAR
        )"""
    )


def m005_drafts_with_leases(con: duckdb.DuckDBPyConnection) -> None:
    """A reviewer's half-made answer is kept with their lease, so a reload or a server restart brings it back."""
    con.execute("ALTER TABLE leases ADD COLUMN draft JSON")  # {ranks, all_bad, flags, rationale, edited_text}
    con.execute("ALTER TABLE leases ADD COLUMN updated_at TIMESTAMP")


def m006_queue_state(con: duckdb.DuckDBPyConnection) -> None:
    """One row whose lock serializes the queue's decisions across processes and whose counter tells every process
    what the queue caches changed (used on PostgreSQL, see store.db.lock_queue; kept on DuckDB so both schemas and
    backups match)."""
    con.execute("CREATE TABLE queue_state (id INTEGER PRIMARY KEY, changes BIGINT NOT NULL DEFAULT 0)")
    con.execute("INSERT INTO queue_state (id, changes) VALUES (1, 0)")


def m007_job_host(con: duckdb.DuckDBPyConnection) -> None:
    """The machine a job's runner runs on: with servers on several machines (PostgreSQL), only that machine can
    tell whether its PIDs are alive, signal them, or read its log."""
    con.execute("ALTER TABLE jobs ADD COLUMN runner_host VARCHAR")


MIGRATIONS: list[Migration] = [m001_initial_schema, m002_lookup_indexes_and_scores, m003_annotation_app, m004_jobs,
                               m005_drafts_with_leases, m006_queue_state, m007_job_host]
SCHEMA_VERSION = len(MIGRATIONS)


_MIGRATION_LOCK = 0x72616E6B  # "rank": the advisory lock key of `migrate` on PostgreSQL


class _PgDDL:
    """A connection whose statements without parameters (a migration's DDL) are spelled for PostgreSQL."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con

    def execute(self, sql: str, params: list | None = None):  # noqa: ANN201 - the connection's own result
        return self._con.execute(pg_ddl(sql) if params is None else sql, params)


def _applied(con: duckdb.DuckDBPyConnection) -> set[int]:
    exists = on_postgres(con) and \
        con.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is not None  # no DDL right needed
    if not exists:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
            "applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
        )
    return {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}


def migrate(path: str | Path, upto: int | None = None) -> list[str]:
    """Apply the missing migrations (up to `upto`, default all) to the database at `path`; return their names."""
    done: list[str] = []
    target = SCHEMA_VERSION if upto is None else upto
    if is_postgres(path) and _pg_applied(path) >= set(range(1, target + 1)):
        return done  # up to date: nothing that needs more than the app role's rights (no DDL, no lock)
    for version, fn in enumerate(MIGRATIONS[:target], start=1):
        try:
            if _apply(path, version, fn):
                done.append(fn.__name__)
        except Exception as e:
            if type(e).__name__ == "InsufficientPrivilege":
                reason = str(e).splitlines()[0]
                raise PermissionError(
                    f"{redacted(path)}: migration {fn.__name__} needs rights this role lacks ({reason}); "
                    "run `rankloop migrate` as the role that owns the schema") from e
            raise
    return done


def _apply(path: str | Path, version: int, fn: Migration) -> bool:
    """Apply migration `version` in its own transaction unless it is recorded; whether it was applied now."""
    with transaction(path, migration=True) as con:
        lock_migrations(con)  # two migrators at once: the second waits, then sees the version applied
        if version in _applied(con):
            return False
        _run(con, version, fn)
    return True


def _run(con: duckdb.DuckDBPyConnection, version: int, fn: Migration) -> None:
    fn(_PgDDL(con) if on_postgres(con) else con)
    con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, fn.__name__])


def lock_migrations(con: duckdb.DuckDBPyConnection) -> None:
    """PostgreSQL: hold the migrations' advisory lock to the end of the caller's transaction (no migrate or restore
    meanwhile). DuckDB: nothing (one writer at a time)."""
    if on_postgres(con):
        con.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")


def migrate_in(con: duckdb.DuckDBPyConnection, have: int, upto: int) -> None:
    """Apply migrations have+1..upto inside the caller's transaction (a restore: PostgreSQL's DDL is
    transactional, so a failure later in it undoes them too)."""
    for version, fn in enumerate(MIGRATIONS[have:upto], start=have + 1):
        if version == 1:
            _applied(con)  # makes schema_migrations
        _run(con, version, fn)


def _pg_applied(url: str) -> set[int]:
    """The versions recorded in a PostgreSQL database, read without DDL (an empty set when it has no schema)."""

    def work(con: duckdb.DuckDBPyConnection) -> set[int]:
        if con.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
            return set()
        return {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}

    return read(url, work)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0
