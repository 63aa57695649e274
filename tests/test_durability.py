"""Durability with a real `rankloop serve` and reviewer sessions over its websocket (scripts/app_client.py).

- The bounded run of scripts/durability.py: 4 sessions x 15 submits while the server is killed with SIGKILL once
  and restarted; every submit a session saw acknowledged is stored exactly once and the database opens cleanly.
- The same on PostgreSQL with two `rankloop serve` processes on one workspace (sessions sticky to their server,
  each server killed once): no acknowledged submit lost or stored twice across the servers.
- A CLI training job (`rankloop train reward`, tiny model) reads and writes the workspace while reviewers submit
  through the server: no submit fails, and the training run succeeds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from scripts.app_client import start_server, stop_server
from scripts.durability import Session, check, review, run, seed
from store.models import list_models
from store.runs import list_runs
from tests.reward_data import register_tiny, seed_pairs

ROOT = Path(__file__).resolve().parents[1]


def test_acknowledged_submits_survive_a_sigkill_of_the_server_exactly_once(tmp_path):
    result = run(sessions=4, submits=15, kills=1, seed_=7, workspace=tmp_path / "ws")
    assert result.problems == []
    assert result.acknowledged == result.stored == 60 and result.lost == 0 and result.duplicates == 0
    assert result.kills == result.kills_survived == 1 and result.reconnects >= 1
    assert result.unexplained == 0 and result.opens_cleanly
    con = duckdb.connect(str(tmp_path / "ws" / "rankloop.duckdb"))  # opens cleanly after the crash, plainly
    try:
        assert con.execute("SELECT count(*) FROM judgments").fetchone()[0] == 60 + result.unacked_stored
    finally:
        con.close()


def test_two_servers_on_one_postgresql_workspace_each_killed_once_lose_and_duplicate_nothing(tmp_path, pg_databases):
    url = pg_databases.create()
    try:
        result = run(sessions=4, submits=15, kills=2, seed_=11, workspace=tmp_path / "ws", database=url, servers=2)
    finally:
        pg_databases.drop(url)
    assert result.problems == []
    assert result.acknowledged == result.stored == 60 and result.lost == 0 and result.duplicates == 0
    assert result.kills_by_server == [1, 1] and result.kills_survived == 2 and result.reconnects >= 2
    assert result.overfilled == 0 and result.double_leases == 0  # no slot leased twice across the servers
    assert result.unexplained == 0 and result.opens_cleanly
    assert sorted(p.name for p in (tmp_path / "ws").glob("serve-*.log")) == ["serve-0.log", "serve-1.log"]


def test_reviewers_submit_while_a_cli_training_job_reads_and_writes_the_workspace(workspace, tiny_lm):
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, n=12)
    accounts = seed(workspace.db, sessions=3, submits=60)
    proc, url = start_server(workspace.root, log=workspace.root / "serve.log")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    train = subprocess.Popen(
        [sys.executable, "-m", "rankloop", "train", "reward", "--workspace", str(workspace.root), "--base", "tiny",
         "--set", "method=lora", "--max-steps", "4", "--set", "eval_steps=2", "--set", "report_to=[]",
         "--set", "eval_fraction=0.25", "--no-progress", "--name", "rm-while-serving"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sessions = [Session(name, rid) for name, rid in accounts]
    started = time.monotonic()

    async def reviewers() -> list:
        # At least 5 submits each, and keep submitting (a reviewer's pace) until the training job has finished.
        return await asyncio.gather(*(review(url, s, 5, [0], keep_going=lambda: train.poll() is None, think_s=0.3)
                                      for s in sessions), return_exceptions=True)

    try:
        outcomes = asyncio.run(reviewers())
        output, _ = train.communicate(timeout=300)
    finally:
        if train.poll() is None:
            train.kill()
            train.wait()
        stop_server(proc)
    assert [o for o in outcomes if o is not None] == []
    assert train.returncode == 0, output
    assert [r for s in sessions for r in s.refused] == [], "a submit failed while the job ran"
    assert all(not s.queue_empty for s in sessions) and all(s.reconnects == 0 for s in sessions)
    acked = sum(len(s.acked) for s in sessions)
    assert acked >= 15 and all(s.unconfirmed == [] for s in sessions)
    counts, problems = check(workspace.db, sessions)
    assert problems == [] and counts["stored"] == acked and counts["duplicates"] == 0
    (rm,) = [m for m in list_models(workspace.db, kind="reward") if m.name == "rm-while-serving"]
    (run_row,) = list_runs(workspace.db, kind="reward")
    assert run_row.status == "succeeded" and rm.run_id == run_row.id
    print(f"{acked} submits acknowledged in {time.monotonic() - started:.0f} s while the training job ran")


pytestmark = pytest.mark.usefixtures("one_thread")
