"""The audit log: who did what, when (admin actions, logins, imports and exports)."""

from __future__ import annotations

import json
from typing import Any

import duckdb


def log_event(con: duckdb.DuckDBPyConnection, actor: str, action: str, details: dict[str, Any] | None = None) -> None:
    """Append an event inside the caller's transaction, so it commits (or not) with the action it records."""
    con.execute(
        "INSERT INTO audit_log (id, actor, action, details) VALUES (nextval('audit_log_id'), ?, ?, ?)",
        [actor, action, json.dumps(details or {}, default=str)],
    )
