"""The detached process behind one background job: `python -m rankloop.job_runner WORKSPACE JOB_ID`.

It runs `python -m rankloop <argv> --workspace WORKSPACE` with stdout and stderr appended to the job's log, niced
(RANKLOOP_JOB_NICE, default 10) so the reviewers' pages keep the CPU they need, records how the command ended, and
starts the next queued job. SIGTERM (the admin's cancel) becomes SIGINT for the command, which the trainers treat as
an interruption (run row closed as cancelled); after RANKLOOP_CANCEL_GRACE_S seconds (default 30), or at a second
SIGTERM (the admin's "Kill"), the command is killed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_ENV = "RANKLOOP_CANCEL_GRACE_S"
NICE_ENV = "RANKLOOP_JOB_NICE"


def _last_error(log_path: str) -> str | None:
    """The command's own error message (click prints `Error: ...`), else the last line of a traceback."""
    from rankloop.jobs import read_log

    lines = read_log(log_path, max_lines=40).text.splitlines()
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line[len("Error:"):].strip()
    return lines[-1].strip()[:500] if lines else None


def run(root: Path, job_id: int) -> int:
    from rankloop.jobs import start_next
    from rankloop.workspace import open_workspace
    from store.jobs import finish_job, get_job, set_pids

    db = open_workspace(root).db
    set_pids(db, job_id, runner_pid=os.getpid())
    job = get_job(db, job_id)
    cancelled = {"at": None, "again": False}

    def on_term(signum, frame) -> None:  # noqa: ARG001 - the signal handler's signature
        cancelled["again"] = cancelled["at"] is not None  # a second cancel: kill now
        cancelled["at"] = cancelled["at"] or time.monotonic()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # a Ctrl-C meant for the group: same as cancel
    argv = [sys.executable, "-m", "rankloop", *job.argv, "--workspace", str(root)]
    env = {**os.environ, "RANKLOOP_PROGRESS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "RANKLOOP_JOB": str(job_id)}
    nice = int(os.environ.get(NICE_ENV, "10"))
    grace = float(os.environ.get(GRACE_ENV, "30"))
    started = time.monotonic()
    with open(job.log_path, "ab", buffering=0) as log:
        log.write(f"[job {job_id}] $ rankloop {shlex.join(job.argv)}\n".encode())
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=str(root), preexec_fn=(lambda: os.nice(nice)) if nice else None)
        set_pids(db, job_id, child_pid=child.pid)
        interrupted = killed = False
        while child.poll() is None:
            if cancelled["at"] is not None and not interrupted:
                child.send_signal(signal.SIGINT)
                interrupted = True
                log.write(f"\n[job {job_id}] cancel requested: interrupting the command (killed after {grace:g} s)\n"
                          .encode())
            if interrupted and not killed and (cancelled["again"] or time.monotonic() - cancelled["at"] > grace):
                child.kill()
                killed = True
            time.sleep(0.2)
        code = child.returncode
        status = "cancelled" if cancelled["at"] is not None else "succeeded" if code == 0 else "failed"
        error = None if status == "succeeded" else _last_error(job.log_path) if status == "failed" else \
            f"cancelled by {get_job(db, job_id).cancel_requested_by or 'a signal'}"
        log.write(f"\n[job {job_id}] {status} (exit code {code}) after {time.monotonic() - started:.0f} s\n".encode())
    finish_job(db, job_id, status, exit_code=code, error=error)
    start_next(root, db)
    return 0


def main() -> None:
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit("usage: python -m rankloop.job_runner WORKSPACE JOB_ID")
    if os.getpgrp() != os.getpid():  # its own process group even when started by hand
        os.setpgrp()
    sys.exit(run(Path(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
