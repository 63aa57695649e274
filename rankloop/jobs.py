"""Background jobs: launch a `rankloop` command from the browser, follow its log and progress, cancel it.

The app never runs training in its own process (the reviewers' pages must stay quick): a launch adds a job row
and starts a detached runner (`python -m rankloop.job_runner WORKSPACE JOB`, its own session and process group,
niced), which runs the command with its output in `jobs/<id>.log`, records how it ended, and starts the next
queued job. Cancel sends SIGTERM to the runner; the runner turns it into SIGINT for the command (the trainers close
their run rows as cancelled after a SIGINT) and kills it after a grace period. PIDs are checked against
/proc/PID/cmdline before any signal, so a reused PID is never signalled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankloop.job_commands import build_argv
from store.jobs import JobRow, add_job, claim_next, finish_job, get_job, list_jobs, request_cancel, set_pids

RUNNER_MODULE = "rankloop.job_runner"
START_TIMEOUT_S = 120  # a job still 'starting' after this long, with no live runner, is lost
TAIL_BYTES = 64_000
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = re.compile(r"^\s|warnings\.warn|Warning\b")  # tracebacks' and warnings' lines: not a stage
_TQDM = re.compile(r"(\d+)/(\d+) \[([^\]]*)\]")


def jobs_dir(root: str | Path) -> Path:
    folder = Path(root) / "jobs"
    folder.mkdir(exist_ok=True)
    return folder


def launch(root: str | Path, db: str | Path, command: str, values: dict[str, Any], settings: str,
           actor: str) -> JobRow:
    """Check the form, queue the job, and start it when nothing else runs. Raises JobInputError on a bad value."""
    argv = build_argv(command, values, settings)
    job = add_job(db, command, argv, actor, jobs_dir(root))
    start_next(root, db)
    return get_job(db, job.id)


def start_next(root: str | Path, db: str | Path) -> JobRow | None:
    """Start the oldest queued job in a detached runner when no job is running; returns it, or None."""
    refresh(db)
    job = claim_next(db)
    if job is None:
        return None
    with open(job.log_path, "ab") as log:  # the runner's own errors (an import failure) land in the job's log
        runner = subprocess.Popen([sys.executable, "-m", RUNNER_MODULE, str(Path(root).resolve()), str(job.id)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                  cwd=str(root), close_fds=True)
    set_pids(db, job.id, runner_pid=runner.pid)
    return job


def _reap(pid: int) -> None:
    """Collect a finished child of this process, so it does not linger as a zombie that looks alive."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (the runner started it, or it was reparented)
        pass


def pid_is(pid: int | None, marker: str) -> bool:
    """Whether `pid` is a live (not zombie) process whose command line contains `marker`."""
    if not pid:
        return False
    _reap(pid)
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return state != "Z" and marker in cmdline
    try:  # no /proc (macOS): liveness only
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def runner_alive(job: JobRow) -> bool:
    return pid_is(job.runner_pid, f"{RUNNER_MODULE} ") and pid_is(job.runner_pid, f" {job.id}")


def command_alive(job: JobRow) -> bool:
    return pid_is(job.child_pid, "rankloop")


def refresh(db: str | Path) -> list[JobRow]:
    """Mark jobs whose runner and command are both gone without a recorded end as `lost`; returns the newest jobs."""
    from datetime import datetime

    jobs = list_jobs(db)
    for job in jobs:
        if job.status not in ("starting", "running") or job.elsewhere() or runner_alive(job) or command_alive(job):
            continue  # a runner on another machine (team mode) is judged there
        if job.status == "starting" and job.runner_pid is None and job.started_at is not None and \
                (datetime.now() - job.started_at).total_seconds() < START_TIMEOUT_S:
            continue  # the launcher has not recorded the runner's PID yet
        finish_job(db, job.id, "lost", error="the runner ended without recording how the command ended "
                                             "(killed, or the machine restarted); the run rows say what it did")
    return list_jobs(db)


def cancel(db: str | Path, job_id: int, actor: str) -> JobRow:
    """Cancel a job: a queued one at once; a running one through its runner (SIGTERM -> SIGINT to the command ->
    SIGKILL after the grace period). When the runner is gone but the command still runs, the command gets SIGINT,
    and SIGKILL on a second cancel."""
    before = get_job(db, job_id)
    if before.active and before.elsewhere():
        raise ValueError(f"job {job_id} runs on {before.runner_host}: cancel it from a server or shell on that "
                         "machine (this one cannot signal its processes)")
    job = request_cancel(db, job_id, actor)
    if job.status == "cancelled":
        return job
    if runner_alive(job):
        os.kill(job.runner_pid, signal.SIGTERM)
    elif command_alive(job):
        os.kill(job.child_pid, signal.SIGKILL if before.cancel_requested_at else signal.SIGINT)
    else:
        refresh(db)
    return get_job(db, job_id)


@dataclass
class LogView:
    text: str  # the tail, as a terminal would show it (a progress bar's redraws collapsed to its last state)
    done: int | None  # the newest progress bar's position and total, when there is one
    total: int | None
    stage: str  # the newest line that is not a progress bar
    detail: str = ""  # what the newest progress bar says in its brackets (rate, time left, tokens/s, ...)


def read_log(path: str | Path, max_lines: int = 200) -> LogView:
    """The end of a job's log, with progress read from the newest tqdm bar (`12/200 [...]`; `rankloop generate`
    prints `answers written: 8/32 [... tokens/s ...]` in the same form)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            raw = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return LogView("", None, None, "")
    raw = _ANSI.sub("", raw)
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in raw.split("\n")]  # a bar's redraws: keep the last
    lines = [line for line in lines if line.strip()]
    bars = list(_TQDM.finditer(raw))
    done, total = (int(bars[-1].group(1)), int(bars[-1].group(2))) if bars else (None, None)
    stage = next((line for line in reversed(lines) if not _TQDM.search(line) and not _NOISE.search(line)), "")
    return LogView("\n".join(lines[-max_lines:]), done, total, stage.strip(), bars[-1].group(3) if bars else "")
