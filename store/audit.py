"""The audit log: who did what, when (admin actions, logins, imports and exports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from store.db import read, write


def log_event(con: duckdb.DuckDBPyConnection, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
    """Append an event inside the caller's transaction, so it commits (or not) with the action it records."""
    con.execute(
        "INSERT INTO audit_log (id, actor, action, details) VALUES (nextval('audit_log_id'), ?, ?, ?)",
        [actor, action, json.dumps(details or {}, default=str)],
    )


def record_event(db: str | Path, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
    """Append an event in a transaction of its own, for an action whose own writes (if any) already committed."""
    write(db, lambda con: log_event(con, actor, action, details))


def list_events(db: str | Path, actor: str | None = None, action: str | None = None,
                limit: int = 500) -> list[dict[str, Any]]:
    """The newest events first, optionally one actor's or one action's (a prefix: 'login' matches 'login.failed')."""
    rows = read(db, lambda con: con.execute(
        "SELECT id, logged_at, actor, action, details FROM audit_log WHERE (CAST(? AS VARCHAR) IS NULL OR actor = ?) "
        "AND (CAST(? AS VARCHAR) IS NULL OR starts_with(action, ?)) ORDER BY id DESC LIMIT ?",
        [actor, actor, action, action, limit]).fetchall())
    return [{"id": r[0], "logged_at": r[1], "actor": r[2], "action": r[3], "details": json.loads(r[4])} for r in rows]
