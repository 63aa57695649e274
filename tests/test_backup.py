"""`rankloop backup` while another real process writes, and `rankloop restore` round trips (real CLI processes)."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from rankloop.cli import main
from store.migrations import SCHEMA_VERSION
from tests.conftest import table_hash
from tests.test_store_concurrency import _comparisons

ROOT = Path(__file__).resolve().parents[1]

# Writes judgments one by one and prints each idempotency key once its transaction committed (acknowledged).
WRITER = textwrap.dedent(
    """
    import sys
    from store.judgments import NewJudgment, add_judgment
    db, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(100000):
        cid = first + i % (last - first + 1)
        add_judgment(db, NewJudgment(comparison_id=cid, reviewer=f"w{i % 7}", ranking=None, all_bad=True,
                                     idempotency_key=f"key-{i}"))
        print(f"key-{i}", flush=True)
    """
)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rankloop", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _keys(db: Path) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {k for (k,) in con.execute("SELECT idempotency_key FROM judgments").fetchall()}
    finally:
        con.close()


def test_backup_while_another_process_writes_keeps_every_acknowledged_judgment(workspace, tmp_path):
    ids = _comparisons(workspace.db, 20)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(workspace.db), str(ids[0]), str(ids[-1])],
        env={**os.environ, "PYTHONPATH": str(ROOT), "RANKLOOP_LOCK_TIMEOUT": "120"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    acked: list[str] = []
    reader = threading.Thread(target=lambda: acked.extend(line.strip() for line in writer.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while len(acked) < 40 and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 40, writer.stderr.read() if writer.poll() is not None else "writer too slow"
        before = set(acked)  # every judgment acknowledged before the backup began
        out = _cli("backup", str(tmp_path / "bk"), "-w", str(workspace.root))
        assert out.returncode == 0, out.stderr
        during = len(acked)
        time.sleep(1.0)
        assert writer.poll() is None, writer.stderr.read()  # the writer kept going through the backup
        assert len(acked) > during
    finally:
        writer.kill()
        writer.wait()
    copied = _keys(tmp_path / "bk" / "rankloop.duckdb")
    assert before <= copied, f"{len(before - copied)} acknowledged judgments missing from the backup"
    assert len(copied) < len(_keys(workspace.db))  # and the workspace went on growing after it
    manifest = json.loads((tmp_path / "bk" / "backup.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["tables"]["judgments"] == len(copied)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bk")]  # no temporary folder left behind
    out = _cli("status", "--json", "-w", str(tmp_path / "bk"))  # the copy opens as a workspace
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["judgments"] == len(copied)


def _seeded(workspace):
    from store.judgments import NewJudgment, add_judgment
    from store.users import add_user

    ids = _comparisons(workspace.db, 5)
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    for i, cid in enumerate(ids):
        add_judgment(workspace.db, NewJudgment(comparison_id=cid, reviewer="rita", all_bad=True,
                                               idempotency_key=f"k{i}", rationale=f"reason {i}"))
    (workspace.runs_dir / "run-1").mkdir()
    (workspace.runs_dir / "run-1" / "log.txt").write_text("step 1\n")
    return workspace


def test_restore_round_trips_the_tables(workspace, tmp_path):
    ws = _seeded(workspace)
    runner = CliRunner()
    r = runner.invoke(main, ["backup", str(tmp_path / "bk"), "--with-runs", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["restore", str(tmp_path / "bk"), str(tmp_path / "restored")])
    assert r.exit_code == 0, r.output
    assert "restored" in r.output
    assert table_hash(tmp_path / "restored" / "rankloop.duckdb") == table_hash(ws.db)
    assert (tmp_path / "restored" / "runs" / "run-1" / "log.txt").read_text() == "step 1\n"
    assert (tmp_path / "restored" / "rankloop.toml").read_text() == (ws.root / "rankloop.toml").read_text()
    from store.audit import list_events
    assert list_events(ws.db, action="workspace.backup")[0]["details"]["to"] == str(tmp_path / "bk")


def test_backup_without_runs_leaves_them_out(workspace, tmp_path):
    ws = _seeded(workspace)
    assert CliRunner().invoke(main, ["backup", str(tmp_path / "bk"), "-w", str(ws.root)]).exit_code == 0
    assert list((tmp_path / "bk" / "runs").iterdir()) == []


def test_restore_refuses_a_non_empty_workspace_unless_forced(workspace, tmp_path):
    ws = _seeded(workspace)
    runner = CliRunner()
    assert runner.invoke(main, ["backup", str(tmp_path / "bk"), "-w", str(ws.root)]).exit_code == 0
    other = tmp_path / "other"
    assert runner.invoke(main, ["init", str(other)]).exit_code == 0
    before = table_hash(other / "rankloop.duckdb")
    r = runner.invoke(main, ["restore", str(tmp_path / "bk"), str(other)])
    assert r.exit_code == 1 and "not empty; pass --force" in r.output
    assert table_hash(other / "rankloop.duckdb") == before
    r = runner.invoke(main, ["restore", str(tmp_path / "bk"), str(other), "--force"])
    assert r.exit_code == 0, r.output
    assert table_hash(other / "rankloop.duckdb") == table_hash(tmp_path / "bk" / "rankloop.duckdb")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".other")]


@pytest.mark.parametrize("damage, message", [
    ("truncate", "sha256 differs"),
    ("newer", "newer than this rankloop"),
    ("not_duckdb", "not a DuckDB database"),
])
def test_restore_refuses_a_damaged_or_newer_backup(workspace, tmp_path, damage, message):
    ws = _seeded(workspace)
    bk = tmp_path / "bk"
    assert CliRunner().invoke(main, ["backup", str(bk), "-w", str(ws.root)]).exit_code == 0
    db = bk / "rankloop.duckdb"
    if damage == "truncate":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif damage == "newer":
        (bk / "backup.json").unlink()
        con = duckdb.connect(str(db))
        con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, 'm999_future')", [SCHEMA_VERSION + 1])
        con.close()
    else:
        (bk / "backup.json").unlink()
        db.write_bytes(b"this is not a database\n" * 100)
    r = CliRunner().invoke(main, ["restore", str(bk), str(tmp_path / "restored")])
    assert r.exit_code == 1 and message in r.output, r.output
    assert not (tmp_path / "restored").exists()
