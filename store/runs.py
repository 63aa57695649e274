"""Run rows: every training, evaluation or sampling job with its config, data snapshot, status and metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.db import read, write

STATUSES = ("running", "succeeded", "failed", "cancelled")


@dataclass
class RunRow:
    id: int
    kind: str
    config: dict[str, Any]
    data_snapshot: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    output_path: str | None
    error: str | None
    started_at: Any
    finished_at: Any


def start_run(db: str | Path, kind: str, config: dict[str, Any], data_snapshot: dict[str, Any] | None = None,
              output_path: str | None = None) -> int:
    """A new run row in status 'running'; returns its id."""

    def work(con) -> int:
        (rid,) = con.execute("SELECT nextval('runs_id')").fetchone()
        con.execute(
            "INSERT INTO runs (id, kind, config, data_snapshot, status, output_path) "
            "VALUES (?, ?, ?, ?, 'running', ?)",
            [rid, kind, json.dumps(config, default=str), json.dumps(data_snapshot or {}, default=str), output_path],
        )
        return int(rid)

    return write(db, work)


def update_run(db: str | Path, run_id: int, *, metrics: dict[str, Any] | None = None,
               data_snapshot: dict[str, Any] | None = None, output_path: str | None = None) -> None:
    """Merge `metrics` into the run's metrics; replace the snapshot or output path when given."""

    def work(con) -> None:
        row = con.execute("SELECT metrics FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise ValueError(f"no run with id {run_id}")
        merged = {**json.loads(row[0]), **(metrics or {})}
        con.execute("UPDATE runs SET metrics = ? WHERE id = ?", [json.dumps(merged, default=str), run_id])
        if data_snapshot is not None:
            snapshot = json.dumps(data_snapshot, default=str)
            con.execute("UPDATE runs SET data_snapshot = ? WHERE id = ?", [snapshot, run_id])
        if output_path is not None:
            con.execute("UPDATE runs SET output_path = ? WHERE id = ?", [output_path, run_id])

    write(db, work)


def finish_run(db: str | Path, run_id: int, status: str, *, metrics: dict[str, Any] | None = None,
               error: str | None = None) -> None:
    """Close a run as succeeded, failed or cancelled (with the error when there was one)."""
    if status not in STATUSES[1:]:
        raise ValueError(f"status must be one of {STATUSES[1:]}, got {status!r}")
    if metrics:
        update_run(db, run_id, metrics=metrics)
    write(db, lambda con: con.execute(
        "UPDATE runs SET status = ?, error = ?, finished_at = current_timestamp WHERE id = ?", [status, error, run_id]
    ))


def get_run(db: str | Path, run_id: int) -> RunRow:
    rows = list_runs(db, run_id=run_id)
    if not rows:
        raise ValueError(f"no run with id {run_id}")
    return rows[0]


def list_runs(db: str | Path, kind: str | None = None, run_id: int | None = None) -> list[RunRow]:
    sql = ("SELECT id, kind, config, data_snapshot, status, metrics, output_path, error, started_at, finished_at "
           "FROM runs WHERE (CAST(? AS VARCHAR) IS NULL OR kind = ?) AND (CAST(? AS BIGINT) IS NULL OR id = ?) "
           "ORDER BY id")
    rows = read(db, lambda con: con.execute(sql, [kind, kind, run_id, run_id]).fetchall())
    return [RunRow(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4], json.loads(r[5]), *r[6:]) for r in rows]


def reopen_run(db: str | Path, run_id: int) -> None:
    """Put a failed or cancelled run back to 'running' (a resumed orchestration run keeps its row and children)."""
    write(db, lambda con: con.execute(
        "UPDATE runs SET status = 'running', error = NULL, finished_at = NULL WHERE id = ?", [run_id]))
