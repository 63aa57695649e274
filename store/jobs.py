"""Job rows: a `rankloop` command an admin launched from the browser, run in the background by a detached runner.

A job moves queued -> starting -> running -> succeeded | failed | cancelled, or to `lost` when its runner died
without saying how the command ended (the machine restarted, the runner was killed). One job runs at a time per
workspace (training fills every core); the others wait as `queued` and the runner that finishes starts the next.
Claiming the next job is one transaction, and DuckDB lets one process write at a time, so two processes never
start the same job.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.audit import log_event
from store.db import read, write
from store.dialect import on_postgres

ACTIVE = ("queued", "starting", "running")
FINISHED = ("succeeded", "failed", "cancelled", "lost")
_COLUMNS = ("id, command, argv, status, created_by, created_at, started_at, finished_at, runner_pid, child_pid, "
            "exit_code, cancel_requested_at, cancel_requested_by, log_path, error, runner_host")


@dataclass
class JobRow:
    id: int
    command: str
    argv: list[str]
    status: str
    created_by: str
    created_at: Any
    started_at: Any
    finished_at: Any
    runner_pid: int | None
    child_pid: int | None
    exit_code: int | None
    cancel_requested_at: Any
    cancel_requested_by: str | None
    log_path: str
    error: str | None
    runner_host: str | None = None  # the machine the runner runs on (socket.gethostname()), once it started

    def elsewhere(self) -> bool:
        """Whether the runner runs on another machine: its PIDs and log mean nothing here."""
        return self.runner_host is not None and self.runner_host != this_host()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _row(r: tuple) -> JobRow:
    return JobRow(r[0], r[1], json.loads(r[2]), *r[3:])


def add_job(db: str | Path, command: str, argv: list[str], created_by: str, log_dir: str | Path) -> JobRow:
    """A queued job whose log goes to `log_dir/<id>.log`; audited as `job.launch`."""

    def work(con) -> int:
        (jid,) = con.execute("SELECT nextval('jobs_id')").fetchone()
        log_path = str(Path(log_dir) / f"{int(jid)}.log")
        con.execute("INSERT INTO jobs (id, command, argv, status, created_by, log_path) "
                    "VALUES (?, ?, ?, 'queued', ?, ?)", [jid, command, json.dumps(argv), created_by, log_path])
        log_event(con, created_by, "job.launch", {"job": int(jid), "command": command, "argv": argv})
        return int(jid)

    return get_job(db, write(db, work))


def claim_next(db: str | Path) -> JobRow | None:
    """The oldest queued job, now `starting`, when no other job is starting or running; else None."""

    def work(con) -> int | None:
        if on_postgres(con):
            # Two runners (two servers) must not both see none running: the lock conflicts with itself and with
            # every write to jobs, and READ COMMITTED reads what was committed before it was granted. On DuckDB
            # the file lock serializes (docs/postgresql.md, section 5).
            con.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
        busy = con.execute("SELECT count(*) FROM jobs WHERE status IN ('starting', 'running')").fetchone()[0]
        if busy:
            return None
        row = con.execute("SELECT min(id) FROM jobs WHERE status = 'queued'").fetchone()
        if row[0] is None:
            return None
        con.execute("UPDATE jobs SET status = 'starting', started_at = current_timestamp WHERE id = ?", [row[0]])
        return int(row[0])

    jid = write(db, work)
    return None if jid is None else get_job(db, jid)


def this_host() -> str:
    return socket.gethostname()


def set_pids(db: str | Path, job_id: int, *, runner_pid: int | None = None, child_pid: int | None = None) -> None:
    """Record the runner's PID and machine (job still `starting`) or the command's PID (job now `running`)."""

    def work(con) -> None:
        if runner_pid is not None:
            con.execute("UPDATE jobs SET runner_pid = ?, runner_host = ? WHERE id = ?",
                        [runner_pid, this_host(), job_id])
        if child_pid is not None:
            con.execute("UPDATE jobs SET child_pid = ?, status = 'running' WHERE id = ? AND status = 'starting'",
                        [child_pid, job_id])

    write(db, work)


def finish_job(db: str | Path, job_id: int, status: str, exit_code: int | None = None,
               error: str | None = None) -> None:
    """Close an active job; a job already finished keeps its first ending."""
    if status not in FINISHED:
        raise ValueError(f"status must be one of {FINISHED}, got {status!r}")
    write(db, lambda con: con.execute(
        "UPDATE jobs SET status = ?, exit_code = ?, error = ?, finished_at = current_timestamp "
        "WHERE id = ? AND status IN ('queued', 'starting', 'running')", [status, exit_code, error, job_id]))


def request_cancel(db: str | Path, job_id: int, actor: str) -> JobRow:
    """Mark the cancel request (audited as `job.cancel`); a queued job is cancelled at once. Returns the row."""

    def work(con) -> None:
        row = con.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            raise ValueError(f"no job with id {job_id}")
        if row[0] not in ACTIVE:
            raise ValueError(f"job {job_id} has already ended ({row[0]})")
        con.execute("UPDATE jobs SET cancel_requested_at = current_timestamp, cancel_requested_by = ? WHERE id = ?",
                    [actor, job_id])
        if row[0] == "queued":
            con.execute("UPDATE jobs SET status = 'cancelled', finished_at = current_timestamp WHERE id = ?", [job_id])
        log_event(con, actor, "job.cancel", {"job": job_id, "status": row[0]})

    write(db, work)
    return get_job(db, job_id)


def get_job(db: str | Path, job_id: int) -> JobRow:
    row = read(db, lambda con: con.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", [job_id]).fetchone())
    if row is None:
        raise ValueError(f"no job with id {job_id}")
    return _row(row)


def list_jobs(db: str | Path, limit: int = 100) -> list[JobRow]:
    """The newest jobs first."""
    rows = read(db, lambda con: con.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?",
                                            [limit]).fetchall())
    return [_row(r) for r in rows]
