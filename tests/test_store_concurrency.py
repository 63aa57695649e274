"""Two real processes writing one workspace at once: every write lands; a lock held too long gives a clear error."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import WorkspaceBusy, open_connection, write
from store.judgments import NewJudgment, add_judgment

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import sys
    from store.judgments import NewJudgment, add_judgment
    db, who, n, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    acked = 0
    for i in range(n):
        cid = first + i % (last - first + 1)
        add_judgment(db, NewJudgment(comparison_id=cid, reviewer=who, ranking=None, all_bad=True,
                                     idempotency_key=f"{who}-{i}"))
        acked += 1
    print(acked)
    """
)


def _comparisons(db: Path, n: int) -> list[int]:
    batch = Batch()
    for i in range(n):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"q{i}"}], text=f"q{i}"))
        batch.responses += [Response(key=(i, 0), prompt_key=i, text="a"), Response(key=(i, 1), prompt_key=i, text="b")]
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, 0), (i, 1)]))
    return write(db, lambda con: write_batch(con, batch)).comparison_ids


def _spawn(db: Path, who: str, n: int, ids: list[int], timeout: float = 120) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANKLOOP_LOCK_TIMEOUT": str(timeout)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), who, str(n), str(ids[0]), str(ids[-1])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_processes_writing_at_once_lose_nothing(workspace):
    ids = _comparisons(workspace.db, 10)
    procs = [_spawn(workspace.db, who, 150, ids) for who in ("alice", "bob")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "150"
    con = duckdb.connect(str(workspace.db))
    rows = con.execute(
        "SELECT r.name, count(*), count(DISTINCT j.idempotency_key) FROM judgments j "
        "JOIN reviewers r ON r.id = j.reviewer_id GROUP BY r.name ORDER BY 1"
    ).fetchall()
    assert rows == [("alice", 150, 150), ("bob", 150, 150)]


def test_a_writer_waits_for_a_process_holding_the_file(workspace):
    ids = _comparisons(workspace.db, 2)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(workspace.db)!r}); "
                               "print('held', flush=True); time.sleep(2); c.close()"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    t = time.monotonic()
    jid = add_judgment(workspace.db, NewJudgment(comparison_id=ids[0], reviewer="carol", all_bad=True,
                                                 idempotency_key="k1"))
    assert time.monotonic() - t > 0.5  # it did wait for the holder
    holder.wait(timeout=30)
    assert jid > 0


def test_a_lock_held_past_the_bounded_wait_gives_a_clear_error(workspace, monkeypatch):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(workspace.db)!r}); "
                               "print('held', flush=True); time.sleep(5)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("RANKLOOP_LOCK_TIMEOUT", "0.5")
        with pytest.raises(WorkspaceBusy, match=r"rankloop\.duckdb: another process has held the workspace"):
            open_connection(workspace.db)
    finally:
        holder.kill()
        holder.wait()


def test_a_retried_submit_is_stored_once(workspace):
    ids = _comparisons(workspace.db, 1)
    con = duckdb.connect(str(workspace.db))
    (a, b) = con.execute("SELECT response_ids FROM comparisons WHERE id = ?", [ids[0]]).fetchone()[0]
    con.close()
    j = NewJudgment(comparison_id=ids[0], reviewer="dan", ranking=[[a], [b]], idempotency_key="same-key")
    assert add_judgment(workspace.db, j) == add_judgment(workspace.db, j)
    con = duckdb.connect(str(workspace.db))
    assert con.execute("SELECT count(*) FROM judgments").fetchone()[0] == 1


@pytest.mark.parametrize(
    "ranking, message",
    [([[1]], "not ranked"), ([[1], [1, 2]], "more than once"), ([[1], [99]], "not in this comparison")],
)
def test_an_invalid_ranking_is_refused_and_nothing_is_written(workspace, ranking, message):
    ids = _comparisons(workspace.db, 1)
    con = duckdb.connect(str(workspace.db))
    resp = con.execute("SELECT response_ids FROM comparisons WHERE id = ?", [ids[0]]).fetchone()[0]
    con.close()
    remap = {1: resp[0], 2: resp[1], 99: 99}
    bad = [[remap[r] for r in g] for g in ranking]
    with pytest.raises(ValueError, match=message):
        add_judgment(workspace.db, NewJudgment(comparison_id=ids[0], reviewer="eve", ranking=bad, idempotency_key="x"))
    con = duckdb.connect(str(workspace.db))
    assert con.execute("SELECT count(*) FROM judgments").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM reviewers").fetchone()[0] == 0


def test_peeking_at_the_header_while_connected_keeps_the_file_locked(workspace):
    """POSIX fcntl locks belong to the process: closing any descriptor of the file drops them. Another thread
    asking whether the workspace is encrypted must not open and close the file, or a second process gets in."""
    from store.db import is_encrypted

    con = open_connection(workspace.db)
    try:
        assert is_encrypted(workspace.db) is False  # what a second session's open does while this one is held
        other = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(workspace.db)!r})"],
                               capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "Could not set lock" in other.stderr, "the lock was dropped"
    finally:
        con.close()
