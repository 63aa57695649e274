"""A process that keeps the database open between units of work (`store.db.hold`, what `rankloop serve` does)
still lets other processes write the workspace, and the queue's cache of open comparisons always answers what
the plain query answers."""

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from store import db as store_db
from store import queue as q
from store.batch import Batch, Comparison, Judgment, Prompt, Response, write_batch
from store.db import _held_for, _wait_dir, hold, read, write
from store.judgments import NewJudgment, add_judgment
from store.queue import Answer, next_item, set_priority, set_required_reviewers, submit_and_next, undo
from store.users import add_user

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import sys, time
    from store.judgments import NewJudgment, add_judgment
    db, who, n, cid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t0 = time.monotonic()
    for i in range(n):
        add_judgment(db, NewJudgment(comparison_id=cid, reviewer=who, ranking=None, all_bad=True,
                                     idempotency_key=f"{who}-{i}"))
    print(n, time.monotonic() - t0)
    """
)


@pytest.fixture
def held():
    hold(True)
    yield
    hold(False)


def _seed(db: Path, n: int, judged: int = 0, required: int = 1, rounds: int = 1) -> list[int]:
    batch, tag = Batch(), f"{time.monotonic_ns()}"
    for i in range(n):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"q{tag}.{i}"}]))
        batch.responses += [Response(key=(i, j), prompt_key=i, text=f"a{i}.{j}") for j in (0, 1)]
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, 0), (i, 1)], round=i % rounds,
                                            required_reviewers=required))
        if i < judged:
            batch.judgments.append(Judgment(comparison_key=i, reviewer=f"imp{i % 3}", idempotency_key=f"imp{tag}.{i}",
                                            ranking=[[(i, 0)], [(i, 1)]]))
    return write(db, lambda con: write_batch(con, batch)).comparison_ids


def _writer(db: Path, who: str, n: int, cid: int, timeout_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANKLOOP_LOCK_TIMEOUT": str(timeout_s)}
    env.pop(store_db.HOLD_ENV, None)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), who, str(n), str(cid)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_units_of_work_share_one_open_instance(workspace, held):
    ids = _seed(workspace.db, 3)
    for i in range(20):
        add_judgment(workspace.db, NewJudgment(comparison_id=ids[0], reviewer="r", all_bad=True,
                                               idempotency_key=f"k{i}"))
    assert read(workspace.db, lambda con: con.execute("SELECT count(*) FROM judgments").fetchone()[0]) == 20
    assert _held_for(workspace.db).opens == 1


def test_another_process_writes_while_this_one_holds_the_file_idle(workspace, held):
    """Without the hand-over the writer would wait for the whole lock timeout and fail with WorkspaceBusy."""
    ids = _seed(workspace.db, 2)
    read(workspace.db, lambda con: con.execute("SELECT 1").fetchone())  # now held, and idle
    proc = _writer(workspace.db, "cli", 5, ids[0], timeout_s=10)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split()[0] == "5"
    # the holder reopens and sees what the other process wrote
    assert read(workspace.db, lambda con: con.execute(
        "SELECT count(*) FROM judgments WHERE reviewer_id = (SELECT id FROM reviewers WHERE name = 'cli')"
    ).fetchone()[0]) == 5
    assert not _wait_dir(workspace.db).exists()


def test_both_processes_keep_writing_at_once_and_nothing_is_lost(workspace, held):
    ids = _seed(workspace.db, 2)
    stop = threading.Event()
    mine: list[int] = []
    errors: list[BaseException] = []

    def busy(t: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                mine.append(add_judgment(workspace.db, NewJudgment(
                    comparison_id=ids[1], reviewer=f"app{t}", all_bad=True, idempotency_key=f"app{t}-{i}")))
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=busy, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    try:
        proc = _writer(workspace.db, "cli", 30, ids[0], timeout_s=20)
        out, err = proc.communicate(timeout=180)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert proc.returncode == 0, err
    con_count = read(workspace.db, lambda con: con.execute(
        "SELECT count(*) FILTER (WHERE idempotency_key LIKE 'cli-%'), count(*) FILTER (WHERE idempotency_key "
        "LIKE 'app%') FROM judgments").fetchone())
    assert con_count == (30, len(mine)) and len(mine) > 0


def test_a_marker_left_by_a_killed_process_does_not_stall_the_holder(workspace, held):
    _seed(workspace.db, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _wait_dir(workspace.db).mkdir()
    (_wait_dir(workspace.db) / str(dead.pid)).touch()
    t0 = time.monotonic()
    assert read(workspace.db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()[0]) == 1
    assert time.monotonic() - t0 < 2
    assert not _wait_dir(workspace.db).exists()


def test_a_database_replaced_under_the_same_path_is_reopened(workspace, tmp_path, held):
    """A restore renames another file onto the path: the holder notices (the path's inode) and reopens."""
    _seed(workspace.db, 1)
    other = tmp_path / "other.duckdb"
    hold(False)
    src = duckdb.connect(str(workspace.db))
    (name,) = src.execute("SELECT current_database()").fetchone()
    src.execute(f"ATTACH '{other}' AS other")
    src.execute(f'COPY FROM DATABASE "{name}" TO other')
    src.execute("DETACH other")
    src.close()
    copy = duckdb.connect(str(other))
    copy.execute("DELETE FROM comparisons")
    copy.close()
    hold(True)
    assert read(workspace.db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()[0]) == 1
    opens = _held_for(workspace.db).opens
    os.replace(other, workspace.db)
    assert read(workspace.db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()[0]) == 0
    assert _held_for(workspace.db).opens == opens + 1


def _plain(db: Path, reviewer_id: int, round: int | None) -> tuple:
    return read(db, lambda con: tuple(q._queue_query(con, reviewer_id, round)))


def _cached(db: Path, reviewer_id: int, round: int | None) -> tuple:
    """As the queue's own transactions see it (labelled in a holding process, fingerprinted elsewhere)."""
    return write(db, lambda con: q._queue_state(con, reviewer_id, round), keeps_queue_cache=True)


def _cached_progress(db: Path, reviewer_id: int) -> dict:
    return write(db, lambda con: q.progress_in(con, reviewer_id), keeps_queue_cache=True)


def _plain_progress(db: Path, reviewer_id: int) -> dict:
    today, total = read(db, lambda con: con.execute(
        "SELECT count(*) FILTER (WHERE created_at >= current_date), count(*) FROM judgments "
        "WHERE reviewer_id = ? AND retracted_at IS NULL AND NOT skipped", [reviewer_id]).fetchone())
    return {"done_today": today, "total": total, "remaining": _plain(db, reviewer_id, None)[0]}


@pytest.mark.both_backends
@pytest.mark.parametrize("holding", [False, True])
def test_the_cached_queue_answers_what_the_plain_query_answers(workspace, holding):
    """Random submits, skips, undos, imports, new N, priorities and gold: after each, every reviewer's
    (remaining, next regular, next gold) from the cache equals the full query's."""
    hold(holding)
    try:
        rng = random.Random(7)
        _seed(workspace.db, 30, judged=12, required=2, rounds=2)
        names = ["ann", "bo", "cy"]
        uids = {n: add_user(workspace.db, n, "reviewer", "password " + n, actor="t") for n in names}
        items = {n: next_item(workspace.db, uids[n]) for n in names}
        last: dict[str, int] = {}
        checked = 0
        for step in range(60):
            n = rng.choice(names)
            action = rng.random()
            item = items[n]
            if action < 0.55 and item is not None:
                skipped = rng.random() < 0.2
                jid, items[n] = submit_and_next(workspace.db, item.lease_id, uids[n], n,
                                                Answer(ranking=None if skipped else [[r] for r, _ in item.responses]),
                                                skipped=skipped)
                last[n] = jid
            elif action < 0.65 and n in last:
                items[n] = undo(workspace.db, last.pop(n), uids[n], n,
                                release_lease_id=item.lease_id if item else None)
            elif action < 0.75:
                _seed(workspace.db, 2, judged=1, required=rng.choice([1, 2]))
            elif action < 0.8:
                set_required_reviewers(workspace.db, rng.choice([1, 2, 3]), "t")
            elif action < 0.85:
                set_priority(workspace.db, rng.choice([0.0, 5.0]), "t", round=rng.choice([0, 1]))
            elif action < 0.9:
                from store.agreement import set_gold

                cid = rng.randint(1, 20)
                set_gold(workspace.db, cid, "t", all_bad=True)
            for who in names:
                for rnd in (None, 0, 1):
                    assert _cached(workspace.db, uids[who], rnd) == _plain(workspace.db, uids[who], rnd), (step, who)
                    checked += 1
                progress = _cached_progress(workspace.db, uids[who])
                assert progress == _plain_progress(workspace.db, uids[who]), (step, who)
        assert checked == 60 * 9
    finally:
        hold(False)


@pytest.mark.both_backends
@pytest.mark.parametrize("holding", [False, True])
def test_a_judgment_written_by_another_process_closes_the_comparison_in_the_cache(workspace, holding):
    """Holding the file, the other process's write arrives across a hand-over (a reopen renews the label);
    otherwise the fingerprint sees it."""
    hold(holding)
    try:
        ids = _seed(workspace.db, 2)
        uid = add_user(workspace.db, "ann", "reviewer", "password ann", actor="t")
        assert _cached(workspace.db, uid, None)[:2] == (2, ids[0])
        proc = _writer(workspace.db, "cli", 1, ids[0], timeout_s=10)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        assert _cached(workspace.db, uid, None)[:2] == (1, ids[1]) == _plain(workspace.db, uid, None)[:2]
    finally:
        hold(False)
