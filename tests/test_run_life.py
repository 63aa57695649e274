"""A run's life on its row (training.runs): an interruption closes it as cancelled even when a library turns the
KeyboardInterrupt into an error of its own; any other error closes it as failed. Each case runs in its own process
(as a trainer does): a SIGINT leaves DuckDB's interrupt state changed for the rest of the process."""

from __future__ import annotations

import subprocess
import sys

from store.runs import list_runs

SCRIPT = """
import os, signal, sys
import duckdb
from rankloop.workspace import open_workspace
from training.runs import closed_on_error, open_run

# A process that a shell starts in the background ignores SIGINT, and its children inherit that (a CI runner may be
# one). The job runner's commands never do: the runner handles SIGINT itself, and exec resets handled signals.
signal.signal(signal.SIGINT, signal.default_int_handler)
ws = open_workspace(sys.argv[1])
run_id, _ = open_run(ws, "reward", {"config": {}})

def udf(x: int) -> int:  # a SIGINT while DuckDB runs Python code: DuckDB raises InvalidInputException
    if sys.argv[2] == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    else:
        raise ValueError("bad row")
    return x

con = duckdb.connect(config={"threads": 1})  # the UDF runs in this, the main thread, where signal handlers run
con.create_function("udf", udf)
with closed_on_error(ws.db, run_id):
    con.execute("SELECT udf(1)").fetchall()
"""


def run_in_process(workspace, how: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(workspace.root), how], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0, done.stderr
    return done.stderr


def test_an_interrupt_turned_into_a_library_error_cancels_the_run(workspace):
    stderr = run_in_process(workspace, "interrupt")
    assert "InvalidInputException" in stderr and "KeyboardInterrupt" in stderr  # DuckDB's error, not the interrupt
    (run,) = list_runs(workspace.db)
    assert run.status == "cancelled" and run.error.startswith("InvalidInputException")


def test_another_error_fails_the_run(workspace):
    run_in_process(workspace, "error")
    (run,) = list_runs(workspace.db)
    assert run.status == "failed" and "bad row" in run.error
