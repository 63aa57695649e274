"""Two real processes writing one workspace at once: every write lands; a lock held too long gives a clear error.

On PostgreSQL (tests marked `both_backends`, and the queue tests below) the queue's guarantees hold across threads
and processes through the row lock of `queue_state` (docs/postgresql.md, section 5): a comparison never gets more
reviewers than it needs, a reviewer's lease is never handed out twice, a retried submit is stored once. The tests
about DuckDB's file lock (a writer waiting for a holder, WorkspaceBusy, the fcntl lock) stay DuckDB-only.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import WorkspaceBusy, hold, open_connection, read, write
from store.judgments import NewJudgment, add_judgment
from store.queue import Answer, next_item, submit
from store.users import add_user

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


def _all(db, sql: str, params=()) -> list[tuple]:
    return read(db, lambda con: con.execute(sql, list(params)).fetchall())


def _spawn(db: Path, who: str, n: int, ids: list[int], timeout: float = 120) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANKLOOP_LOCK_TIMEOUT": str(timeout)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), who, str(n), str(ids[0]), str(ids[-1])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.both_backends
def test_two_processes_writing_at_once_lose_nothing(workspace):
    ids = _comparisons(workspace.db, 10)
    procs = [_spawn(workspace.db, who, 150, ids) for who in ("alice", "bob")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "150"
    rows = _all(workspace.db,
                "SELECT r.name, count(*), count(DISTINCT j.idempotency_key) FROM judgments j "
                "JOIN reviewers r ON r.id = j.reviewer_id GROUP BY r.name ORDER BY 1")
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


@pytest.mark.both_backends
def test_a_retried_submit_is_stored_once(workspace):
    ids = _comparisons(workspace.db, 1)
    ((a, b),) = _all(workspace.db, "SELECT response_ids FROM comparisons WHERE id = ?", [ids[0]])[0]
    j = NewJudgment(comparison_id=ids[0], reviewer="dan", ranking=[[a], [b]], idempotency_key="same-key")
    add_judgment(workspace.db, NewJudgment(comparison_id=ids[0], reviewer="dan", all_bad=True,
                                           idempotency_key="other"))  # the reviewer exists: the race is the key's
    stored = []
    go = threading.Barrier(4)

    def again():
        go.wait()
        stored.append(add_judgment(workspace.db, j))

    threads = [threading.Thread(target=again) for _ in range(4)]  # four retries of one submit at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stored) == 4 and len(set(stored)) == 1 and add_judgment(workspace.db, j) == stored[0]
    assert _all(workspace.db, "SELECT count(*) FROM judgments WHERE idempotency_key = 'same-key'") == [(1,)]


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "ranking, message",
    [([[1]], "not ranked"), ([[1], [1, 2]], "more than once"), ([[1], [99]], "not in this comparison")],
)
def test_an_invalid_ranking_is_refused_and_nothing_is_written(workspace, ranking, message):
    ids = _comparisons(workspace.db, 1)
    ((resp,),) = _all(workspace.db, "SELECT response_ids FROM comparisons WHERE id = ?", [ids[0]])
    remap = {1: resp[0], 2: resp[1], 99: 99}
    bad = [[remap[r] for r in g] for g in ranking]
    with pytest.raises(ValueError, match=message):
        add_judgment(workspace.db, NewJudgment(comparison_id=ids[0], reviewer="eve", ranking=bad, idempotency_key="x"))
    assert _all(workspace.db, "SELECT count(*) FROM judgments") == [(0,)]
    assert _all(workspace.db, "SELECT count(*) FROM reviewers") == [(0,)]


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


# Reviewers working the queue at once: each reviewer in two tabs (two threads sharing one account), and in the
# process test the same accounts in two processes (two servers, each with its own pool). Every tab takes the
# reviewer's next item and submits it; the tabs of one reviewer race for the same lease and submit it twice.
QUEUE_WORKER = textwrap.dedent(
    """
    import json, sys
    from store.db import read
    from tests.test_store_concurrency import _work_the_queue
    read(sys.argv[1], lambda con: con.execute("SELECT 1").fetchone())  # the pool is open
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start working at once
    print(json.dumps(_work_the_queue(sys.argv[1], json.loads(sys.argv[2]))))
    """
)


def _work_the_queue(db, reviewers: dict[str, int], tabs: int = 2) -> dict[str, int]:
    """Every reviewer in `tabs` threads: next item, submit, until the queue has nothing for them; returns
    {lease id: judgment id} as the submits answered (a lease submitted twice must answer one id)."""
    answers: dict[str, set[int]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def tab(name: str, rid: int) -> None:
        try:
            while (item := next_item(db, rid)) is not None:
                jid = submit(db, item.lease_id, rid, name, Answer(ranking=[[r] for r, _ in item.responses]))
                with lock:
                    answers.setdefault(str(item.lease_id), set()).add(jid)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=tab, args=(n, rid)) for n, rid in reviewers.items() for _ in range(tabs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert all(len(j) == 1 for j in answers.values()), answers  # a retried submit answers the stored judgment
    return {lease: j.pop() for lease, j in answers.items()}


def _queue_comparisons(db, n: int, required: int) -> list[int]:
    batch = Batch()
    for i in range(n):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"q{i}"}], text=f"q{i}"))
        batch.responses += [Response(key=(i, 0), prompt_key=i, text="a"), Response(key=(i, 1), prompt_key=i, text="b")]
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, 0), (i, 1)],
                                            required_reviewers=required))
    return write(db, lambda con: write_batch(con, batch)).comparison_ids


def _check_the_queue_rules(db, n: int, required: int, answers: dict[str, int]) -> None:
    # Nothing expired or was released, so every lease made is a slot taken: at most N leases per comparison is
    # "never more reviewers than needed", and one lease per reviewer and comparison is "never handed out twice".
    per_comparison = _all(db, "SELECT comparison_id, count(*), count(DISTINCT reviewer_id), "
                              "count(*) FILTER (WHERE outcome = 'submitted') FROM leases GROUP BY comparison_id")
    assert len(per_comparison) == n
    assert all(row[1:] == (required, required, required) for row in per_comparison), per_comparison
    judged = _all(db, "SELECT comparison_id, count(*), count(DISTINCT reviewer_id) FROM judgments "
                      "WHERE retracted_at IS NULL AND NOT skipped GROUP BY comparison_id")
    assert sorted(row[1:] for row in judged) == [(required, required)] * n
    leases = _all(db, "SELECT id, judgment_id FROM leases ORDER BY id")
    assert len({j for _, j in leases}) == len(leases) == n * required  # one judgment per lease, stored once
    assert {str(lid): j for lid, j in leases} == answers


@pytest.mark.both_backends
def test_reviewers_in_several_tabs_at_once_keep_the_queue_rules(workspace):
    n, required = 12, 2
    _queue_comparisons(workspace.db, n, required)
    reviewers = {name: add_user(workspace.db, name, "reviewer", "password " + name, actor="t")
                 for name in ("ann", "bo", "cy")}
    hold(True)  # as `rankloop serve` does (on DuckDB one open instance; on PostgreSQL the server's pool size)
    try:
        answers = _work_the_queue(workspace.db, reviewers, tabs=2)
    finally:
        hold(False)
    _check_the_queue_rules(workspace.db, n, required, answers)


@pytest.mark.parametrize("backend", ["postgresql"])  # on DuckDB two processes take turns with the file
def test_two_servers_working_one_postgresql_queue_keep_its_rules(workspace):
    """The same accounts in two processes, each with its own pool and threads: the row lock of `queue_state`
    serializes their decisions as `_lease_lock` does within one."""
    n, required = 30, 3
    _queue_comparisons(workspace.db, n, required)
    reviewers = {name: add_user(workspace.db, name, "reviewer", "password " + name, actor="t")
                 for name in ("ann", "bo", "cy", "di")}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", QUEUE_WORKER, workspace.db, json.dumps(reviewers)], env=env,
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.poll() is not None else ""
    answers: dict[str, int] = {}
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        for lease, jid in json.loads(out).items():
            assert answers.setdefault(lease, jid) == jid  # both servers were told the same judgment for a lease
    _check_the_queue_rules(workspace.db, n, required, answers)
