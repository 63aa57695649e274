"""Workspace settings an admin changes from the app: guidelines, reviewers per comparison, gold rate, time windows,
the gold accuracy under which a reviewer is flagged (store.reviewer_flags).

Each setting has a default, a type and a check; `get_settings` returns the defaults overlaid with what is stored,
`set_setting` validates, stores and writes an audit event in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from store.audit import log_event
from store.db import read, write


@dataclass(frozen=True)
class Setting:
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    off: Any = None  # the value that None stands for, when None is accepted (it means "off")


SETTINGS: dict[str, Setting] = {
    "guidelines": Setting("", "Markdown shown to reviewers behind the Guidelines button."),
    "required_reviewers": Setting(1, "Distinct reviewers a new comparison needs (the queue page applies it).", 1, 50),
    "gold_rate": Setting(0.0, "Share of items that are gold questions (known answer), 0 to 0.5.", 0.0, 0.5),
    "lease_minutes": Setting(15, "How long an item handed to a reviewer is held for them.", 1, 24 * 60),
    "undo_window_s": Setting(120, "Seconds after a submit during which the reviewer may undo it.", 0, 3600),
    "session_idle_minutes": Setting(60, "A login session ends after this long without activity.", 1, 7 * 24 * 60),
    "session_max_hours": Setting(12, "A login session ends this long after the login, active or not.", 1, 24 * 30),
    "max_failed_logins": Setting(5, "Failed logins in a row before the account is locked for a while.", 1, 100),
    "lockout_s": Setting(60, "First lockout length in seconds; it doubles with each further failure.", 1, 86400),
    "reviewer_flag_below": Setting(0.6, (
        "Gold accuracy under which a reviewer is flagged (after 5 gold items; training and exports can leave "
        "flagged reviewers out), 0 to 1; 0: off."), 0.0, 1.0, off=0.0),
}


def _check(key: str, value: Any) -> Any:
    if key not in SETTINGS:
        raise ValueError(f"unknown setting {key!r} (known: {', '.join(SETTINGS)})")
    spec = SETTINGS[key]
    if value is None and spec.off is not None:
        value = spec.off
    want = type(spec.default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or isinstance(value, bool):
        raise ValueError(f"setting {key}: expected {want.__name__}, got {type(value).__name__}")
    if spec.low is not None and value < spec.low:
        raise ValueError(f"setting {key}: must be >= {spec.low}, got {value}")
    if spec.high is not None and value > spec.high:
        raise ValueError(f"setting {key}: must be <= {spec.high}, got {value}")
    return value


def settings_in(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """All settings (defaults overlaid with stored values), read on the caller's connection."""
    out = {k: s.default for k, s in SETTINGS.items()}
    for key, value in con.execute("SELECT key, value FROM settings").fetchall():
        if key in out:
            out[key] = json.loads(value)
    return out


def get_settings(db: str | Path) -> dict[str, Any]:
    return read(db, settings_in)


def set_setting(db: str | Path, key: str, value: Any, actor: str) -> Any:
    """Validate and store one setting; the change goes to the audit log with the old and new value."""
    value = _check(key, value)

    def work(con: duckdb.DuckDBPyConnection) -> Any:
        old = settings_in(con)[key]
        con.execute(
            "INSERT INTO settings (key, value, updated_at, updated_by) VALUES (?, ?, current_timestamp, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by",
            [key, json.dumps(value), actor],
        )
        shown = (lambda v: f"{len(v)} chars") if key == "guidelines" else (lambda v: v)
        log_event(con, actor, "settings.set", {"key": key, "old": shown(old), "new": shown(value)})
        return value

    return write(db, work)
