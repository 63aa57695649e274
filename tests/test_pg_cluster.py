"""The throw-away PostgreSQL cluster the team-mode work (issue 15) will test on (`tests/pg_cluster.py`, fixtures
`pg_cluster`/`pg_url` in `tests/conftest.py`): the app connects as a role that is not a superuser, two workers
take different rows of a queue with `FOR UPDATE SKIP LOCKED` (what the queue's leases will rely on), and the
cluster is stopped and its folder removed at the end of a session."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is in the dev extras (scripts/setup dev)")
from psycopg import errors  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

from tests.pg_cluster import _alive  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_app_role_is_not_a_superuser(pg_url, pg_cluster):
    assert pg_url == f"postgresql://{pg_cluster.role}@127.0.0.1:{pg_cluster.port}/{pg_cluster.database}"
    assert ":" not in pg_url.split("//", 1)[1].split("@", 1)[0]  # no password in the URL
    with psycopg.connect(pg_url) as con:
        user, is_super = con.execute("SELECT current_user, current_setting('is_superuser')").fetchone()
        assert (user, is_super) == (pg_cluster.role, "off")
        row = con.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False, False)
        # It owns its database, so migrations can create tables in it ...
        con.execute("CREATE TABLE owned_by_app (id BIGINT PRIMARY KEY)")
        con.execute("DROP TABLE owned_by_app")
        con.commit()
    # ... but it cannot make roles or databases, read the server's files, run programs or change server settings.
    with psycopg.connect(pg_url, autocommit=True) as con:
        for statement in ("CREATE ROLE intruder SUPERUSER", "CREATE DATABASE another",
                          "SELECT pg_read_file('postgresql.conf')", "COPY (SELECT 1) TO PROGRAM 'true'",
                          "ALTER SYSTEM SET fsync = on"):
            with pytest.raises(errors.InsufficientPrivilege):
                con.execute(statement)


@pytest.fixture
def queue_table(pg_url):
    """A small queue: six open items, the way comparisons wait for a reviewer."""
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS pg_queue_probe")
        con.execute("CREATE TABLE pg_queue_probe (id BIGINT PRIMARY KEY, priority INT NOT NULL, taken_by TEXT)")
        con.execute("INSERT INTO pg_queue_probe SELECT i, 10 - i, NULL FROM generate_series(1, 6) AS i")
    yield "pg_queue_probe"
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("DROP TABLE pg_queue_probe")


NEXT = ("SELECT id FROM pg_queue_probe WHERE taken_by IS NULL ORDER BY priority DESC, id LIMIT 1 "
        "FOR UPDATE SKIP LOCKED")


def _take(con, worker: str) -> int | None:
    row = con.execute(NEXT).fetchone()
    if row is None:
        return None
    con.execute("UPDATE pg_queue_probe SET taken_by = %s WHERE id = %s", (worker, row[0]))
    return row[0]


def test_two_workers_take_different_rows_with_skip_locked(pg_url, queue_table):
    with psycopg.connect(pg_url) as a, psycopg.connect(pg_url) as b:
        # Both transactions are open at the same time; a's row lock makes b skip to the next item.
        first = _take(a, "a")
        second = _take(b, "b")
        assert (first, second) == (1, 2)
        # Without SKIP LOCKED, b would wait for a's row: shown with NOWAIT instead of a wait.
        with pytest.raises(errors.LockNotAvailable):
            b.execute("SELECT id FROM pg_queue_probe WHERE id = %s FOR UPDATE NOWAIT", (first,))
        b.rollback()  # b's take is undone with its failed transaction: item 2 is open again
        a.commit()
        assert _take(b, "b") == 2
        b.commit()
        # A rolled-back take hands the item back to the next worker.
        assert _take(a, "a") == 3
        a.rollback()
        assert _take(b, "b") == 3
        b.commit()
        taken = a.execute("SELECT id, taken_by FROM pg_queue_probe WHERE taken_by IS NOT NULL ORDER BY id").fetchall()
        assert taken == [(1, "a"), (2, "b"), (3, "b")]


def test_concurrent_workers_through_a_pool_take_each_row_once(pg_url, queue_table):
    """Four threads on a psycopg_pool (the app server's shape) drain the queue: every item taken exactly once."""
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("INSERT INTO pg_queue_probe SELECT i, 0, NULL FROM generate_series(7, 200) AS i")
    taken: dict[str, list[int]] = {}
    failures: list[BaseException] = []

    with ConnectionPool(pg_url, min_size=4, max_size=4, open=True) as pool:
        barrier = threading.Barrier(4)

        def worker(name: str) -> None:
            mine = taken.setdefault(name, [])
            try:
                barrier.wait()
                while True:
                    with pool.connection() as con:  # one transaction per take, committed when the block ends
                        item = _take(con, name)
                    if item is None:
                        return
                    mine.append(item)
            except BaseException as e:  # reported below
                failures.append(e)

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not failures
    everything = sorted(i for items in taken.values() for i in items)
    assert everything == list(range(1, 201))
    with psycopg.connect(pg_url) as con:
        by_worker = dict(con.execute("SELECT taken_by, count(*) FROM pg_queue_probe GROUP BY 1").fetchall())
    assert by_worker == {name: len(items) for name, items in taken.items() if items}


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_session_stops_its_cluster_and_removes_its_folder(tmp_path, pg_cluster):
    """A pytest session in a subprocess uses the same fixtures and records its cluster; after it exits the server's
    PID is gone, its port closed and its folder removed. A second run fails inside the block: cleaned up the same."""
    record = tmp_path / "cluster.json"
    (tmp_path / "conftest.py").write_text("from tests.conftest import pg_cluster, pg_url  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        import json, os, psycopg

        def test_record(pg_cluster, pg_url):
            with psycopg.connect(pg_url) as con:
                assert con.execute("SELECT 1").fetchone() == (1,)
            json.dump({{"folder": str(pg_cluster.folder), "pid": pg_cluster.postmaster_pid(),
                       "port": pg_cluster.port}}, open({str(record)!r}, "w"))
            assert os.path.isdir(pg_cluster.data_dir)
            if os.environ.get("FAIL_INSIDE"):
                raise RuntimeError("a failing test must not leave the cluster running")
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for fail in ("", "1"):
        record.unlink(missing_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
             str(tmp_path / "test_inner.py")],
            cwd=tmp_path, env={**env, "FAIL_INSIDE": fail}, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == (1 if fail else 0), result.stdout + result.stderr
        seen = json.loads(record.read_text())
        assert seen["pid"] and seen["port"] != pg_cluster.port  # its own cluster, beside this session's
        assert not _alive(seen["pid"])
        assert not _port_open(seen["port"])
        assert not Path(seen["folder"]).exists()
    # This session's own cluster is still up (stopped by the fixture at the session's end).
    assert _port_open(pg_cluster.port) and pg_cluster.folder.exists()


@pytest.mark.parametrize(("isolation", "sees"), [("READ COMMITTED", 1), ("REPEATABLE READ", 0)])
def test_a_lock_taken_first_needs_read_committed_to_see_the_last_holders_commit(pg_url, isolation, sees):
    """The queue's decisions are serialized by a lock taken as a transaction's first statement (docs/postgresql.md).
    Under READ COMMITTED the statements after the wait see what the previous holder committed; under REPEATABLE
    READ the snapshot was taken when the waiting statement began, so a reader would count stale leases."""
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("CREATE TABLE IF NOT EXISTS pg_lock_probe (n INT NOT NULL)")
        con.execute("TRUNCATE pg_lock_probe")
        con.execute("INSERT INTO pg_lock_probe VALUES (0)")
    seen: list[int] = []
    with psycopg.connect(pg_url) as holder, psycopg.connect(pg_url) as waiter, \
            psycopg.connect(pg_url, autocommit=True) as watch:
        holder.execute("SELECT pg_advisory_xact_lock(15)")
        holder.execute("UPDATE pg_lock_probe SET n = n + 1")

        def wait_then_read() -> None:
            waiter.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            waiter.execute("SELECT pg_advisory_xact_lock(15)")  # waits for the holder's commit
            seen.append(waiter.execute("SELECT n FROM pg_lock_probe").fetchone()[0])
            waiter.commit()

        t = threading.Thread(target=wait_then_read)
        t.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        for _ in range(500):  # until the waiter is queued on the lock
            if watch.execute(waiting).fetchone()[0]:
                break
            time.sleep(0.01)
        holder.commit()
        t.join(10)
    assert seen == [sees]
