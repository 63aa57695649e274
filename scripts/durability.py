"""Durability under crashes: concurrent reviewer sessions against a real `rankloop serve` killed with SIGKILL.

The harness seeds a workspace (two-answer comparisons, each wanting several reviewers, and one account per
session), starts `rankloop serve`, and runs every session over the app's websocket (scripts/app_client.py): log
in, press "A better", press Submit, read the "(judgment N)" toast that the app shows only after the submit's
transaction committed. Meanwhile the server is killed with SIGKILL at random moments and restarted on the same
port. A session that loses its connection reconnects, logs in again and carries on: the app hands it back the
lease it still holds, so a submit that did not commit is retried under the same lease, which is the same
idempotency key (`app:{reviewer}:{comparison}:{lease}`). A submit that committed but whose toast died with the
server cannot be retried from the app (its lease is closed and the next item shows); the session counts it
unacknowledged and the check below finds it stored once.

At the end the server stops, the database is opened again (every table read, a CHECKPOINT) and checked: every
acknowledged judgment is stored exactly once under its key, no reviewer has two live judgments of one comparison,
and every stored judgment is one a session submitted.

On PostgreSQL (`--database URL`, or `--postgres` for a throw-away cluster from tests/pg_cluster.py) several
servers can serve one workspace: `--servers 2` starts two `rankloop serve` processes on ports of their own, on the
same workspace folder (both read its rankloop.toml; nothing per server is written there). Sessions are spread over
them and sticky: a session always talks to its own server and reconnects to it after a kill. Each server is killed
with SIGKILL (by its own PID) at random moments of its own and restarted on its port, the kills spread over the
servers (every server is killed at least once when --kills >= --servers); the check reads the database through
store.db, so it is the same on both backends.

    .venv/bin/python scripts/durability.py --sessions 20 --submits 500 --kills 3
    .venv/bin/python scripts/durability.py --sessions 4 --submits 15 --kills 1 --workspace /tmp/ws  # keep it
    .venv/bin/python scripts/durability.py --postgres --servers 2 --sessions 20 --submits 500 --kills 4
    .venv/bin/python scripts/durability.py --database postgresql://app@db:5432/rankloop --servers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.app_client import AppSession, SessionLost, free_port, start_server, stop_server  # noqa: E402

PASSWORD = "durability password"


@dataclass
class Session:
    name: str
    reviewer_id: int
    acked: list[tuple[int, int, int]] = field(default_factory=list)  # (judgment id, lease id, comparison id)
    unconfirmed: list[tuple[int, int]] = field(default_factory=list)  # (lease, comparison) submitted, no toast
    attempted: int = 0  # distinct submits (leases) pressed at least once
    retries: int = 0  # submits pressed again after a reconnect (same lease, same key)
    reconnects: int = 0
    refused: list[str] = field(default_factory=list)  # "Not stored: ..." errors the app showed
    queue_empty: bool = False


@dataclass
class Result:
    sessions: int
    submits: int
    attempted: int
    acknowledged: int
    stored: int  # acknowledged judgments found stored under their key
    duplicates: int
    lost: int
    unacked_stored: int  # submitted, toast lost with the server, found stored once
    unexplained: int  # stored judgments no session submitted
    refused: list[str]
    kills: int
    kills_survived: int
    reconnects: int
    retries: int
    wall_s: float
    opens_cleanly: bool
    problems: list[str]
    backend: str = "duckdb"
    servers: int = 1
    kills_by_server: list[int] = field(default_factory=list)
    overfilled: int = 0  # comparisons with more live judgments than the reviewers they want (a lease race)
    double_leases: int = 0  # reviewers holding two open leases at the end

    @property
    def ok(self) -> bool:
        return not self.problems


def seed(db: Path, sessions: int, submits: int) -> list[tuple[str, int]]:
    """Enough two-answer comparisons for every session's submits, and one reviewer account per session."""
    from store.batch import Batch, Comparison, Prompt, Response, write_batch
    from store.db import transaction
    from store.users import add_user

    required = min(3, sessions)
    n = math.ceil(1.15 * sessions * submits / required) + submits // 10 + 5
    batch = Batch()
    for i in range(n):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"durability prompt {i}"}]))
        batch.responses += [Response(key=(i, j), prompt_key=i, text=f"answer {i}.{j}") for j in (0, 1)]
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, 0), (i, 1)],
                                            required_reviewers=required))
    with transaction(db) as con:
        write_batch(con, batch)
    names = [f"durable{i:02d}" for i in range(sessions)]
    return [(name, add_user(db, name, "reviewer", PASSWORD, actor="durability")) for name in names]


async def _reconnect(s: AppSession, session: Session, deadline_s: float) -> None:
    """Connect and log in again, retrying while the server is down."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await s.close()
            await s.connect()
            await s.login(session.name, PASSWORD)
            return
        except SessionLost:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3 + random.random() * 0.5)


async def review(url: str, session: Session, submits: int, progress: list[int], reconnect_s: float = 180,
                 keep_going: Callable[[], bool] = lambda: False, think_s: float = 0.0) -> None:
    """One reviewer: `submits` acknowledged submits, and more while `keep_going()`, or until the queue is empty;
    surviving server restarts. `think_s`: a pause before each submit (0: as fast as the server answers)."""
    s = AppSession(url)
    await _reconnect(s, session, reconnect_s)
    pending: tuple[int, int] | None = None  # the submit pressed and not yet confirmed: (lease, comparison)
    confused = 0
    try:
        while len(session.acked) < submits or keep_going():
            try:
                item = s.item()
            except LookupError:  # a page that is neither an item nor the empty queue: look again
                confused += 1
                if confused > 5:
                    raise
                await s.rerun()
                continue
            confused = 0
            if pending is not None and (item is None or item[0] != pending[0]):
                session.unconfirmed.append(pending)  # its lease closed: it committed before the connection died
                pending = None
            if item is None:
                session.queue_empty = True
                return
            try:
                if pending is None:
                    session.attempted += 1
                else:
                    session.retries += 1
                pending = item
                if think_s:
                    await asyncio.sleep(think_s)
                await s.click(s.button("b-a"))
                await s.click(s.button("b-submit"))
                jid = s.judgment_id()
                errors = [t for t in s.texts("alert") if t.startswith("Not stored")]
                if jid is not None:
                    session.acked.append((jid, *item))
                    progress[0] += 1
                    pending = None
                elif errors:
                    session.refused.append(f"{session.name} lease {item[0]}: {errors[0]}")
                    pending = None
            except SessionLost:
                session.reconnects += 1
                await _reconnect(s, session, reconnect_s)
    finally:
        await s.close()


async def _killer(state: dict, index: int, ws_root: Path, kills: int, total: int, progress: list[int],
                  rng: random.Random) -> None:
    """SIGKILL server `index` (its own PID) when the acknowledged count passes random points of the run, then
    restart it on its port. One killer per server: two servers may be down at once. It returns when
    `state["done"]` is set before its next point (never cancelled mid-restart: the server it is starting in a
    thread would be left running without anyone holding its PID)."""
    points = sorted(rng.uniform(0.1, 0.9) * total for _ in range(kills))
    for point in points:
        while progress[0] < point:
            if state["done"]:
                return
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0, 0.4))  # land anywhere inside a submit, not just after a toast
        proc = state["procs"][index]
        stop_server(proc, signal.SIGKILL)
        state["kills"] += 1
        state["kills_by_server"][index] += 1
        proc, _ = await asyncio.to_thread(start_server, ws_root, state["ports"][index], state["logs"][index])
        state["procs"][index] = proc
        state["restarts"] += 1


def _read_everything(con) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Every table read (a broken file or database fails here), a CHECKPOINT on DuckDB; then the app's judgments,
    the comparisons judged by more reviewers than they want (two servers leasing one slot twice), and the
    reviewers holding more than one open lease."""
    from store.dialect import on_postgres

    postgres = on_postgres(con)
    tables = con.execute("SELECT table_name FROM information_schema.tables "
                         "WHERE table_schema IN ('main', 'public')").fetchall()
    for (table,) in tables:
        con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    if not postgres:
        con.execute("CHECKPOINT")  # PostgreSQL: a superuser's command, and its WAL is not what this checks
    rows = con.execute("SELECT id, idempotency_key, reviewer_id, comparison_id, retracted_at IS NULL "
                       "FROM judgments WHERE idempotency_key LIKE 'app:%'").fetchall()
    overfilled = con.execute(
        "SELECT c.id, c.required_reviewers, count(*) FROM comparisons c JOIN judgments j ON j.comparison_id = c.id "
        "WHERE j.retracted_at IS NULL AND j.idempotency_key LIKE 'app:%' GROUP BY c.id, c.required_reviewers "
        "HAVING count(*) > c.required_reviewers ORDER BY c.id").fetchall()
    double_leases = con.execute("SELECT reviewer_id, count(*) FROM leases WHERE closed_at IS NULL "
                                "GROUP BY reviewer_id HAVING count(*) > 1 ORDER BY reviewer_id").fetchall()
    return rows, overfilled, double_leases


def check(db: Path | str, sessions: list[Session]) -> tuple[dict[str, int], list[str]]:
    """Open the database again (through store.db: the DuckDB file or the PostgreSQL URL) and compare the app's
    judgments with what the sessions saw acknowledged."""
    from store.db import read

    problems: list[str] = []
    rows, overfilled, double_leases = read(db, _read_everything)
    by_key: dict[str, list[int]] = {}
    live: dict[tuple[int, int], int] = {}
    for jid, key, rid, cid, is_live in rows:
        by_key.setdefault(key, []).append(jid)
        if is_live:
            live[(rid, cid)] = live.get((rid, cid), 0) + 1
    dup_keys = {k: v for k, v in by_key.items() if len(v) > 1}
    dup_live = {k: v for k, v in live.items() if v > 1}
    stored = lost = unacked_stored = 0
    expected: set[str] = set()
    for s in sessions:
        for jid, lease, cid in s.acked:
            key = f"app:{s.reviewer_id}:{cid}:{lease}"
            expected.add(key)
            if by_key.get(key) == [jid]:
                stored += 1
            else:
                lost += 1
                problems.append(f"{s.name}: acknowledged judgment {jid} ({key}) stored as {by_key.get(key)}")
        for lease, cid in s.unconfirmed:
            key = f"app:{s.reviewer_id}:{cid}:{lease}"
            expected.add(key)
            unacked_stored += key in by_key
            if key not in by_key:
                problems.append(f"{s.name}: lease {lease} closed without its judgment")
    unexplained = sorted(set(by_key) - expected)
    if dup_keys or dup_live:
        problems.append(f"duplicates: keys {list(dup_keys)[:5]}, (reviewer, comparison) {list(dup_live)[:5]}")
    if unexplained:
        problems.append(f"stored judgments no session submitted: {unexplained[:5]}")
    if overfilled:
        problems.append(f"comparisons judged by more reviewers than they want (id, wanted, live): {overfilled[:5]}")
    if double_leases:
        problems.append(f"reviewers holding several open leases (reviewer, open): {double_leases[:5]}")
    return {"stored": stored, "lost": lost, "duplicates": len(dup_keys) + len(dup_live),
            "unacked_stored": unacked_stored, "unexplained": len(unexplained), "overfilled": len(overfilled),
            "double_leases": len(double_leases)}, problems


async def _run(ws_root: Path, accounts: list[tuple[str, int]], submits: int, kills: int, seed_: int,
               log_dir: Path, servers: int = 1) -> tuple[list[Session], dict]:
    ports = [free_port() for _ in range(servers)]
    logs = [log_dir / ("serve.log" if servers == 1 else f"serve-{i}.log") for i in range(servers)]
    state = {"procs": [], "ports": ports, "logs": logs, "kills": 0, "restarts": 0,
             "kills_by_server": [0] * servers, "done": False}
    try:
        started = await asyncio.gather(*(asyncio.to_thread(start_server, ws_root, port, log)
                                         for port, log in zip(ports, logs, strict=True)), return_exceptions=True)
        state["procs"] = [p for p, _ in (r for r in started if not isinstance(r, BaseException))]
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        urls = [url for _, url in started]
        sessions = [Session(name, rid) for name, rid in accounts]
        progress = [0]
        rng = random.Random(seed_)
        total = len(sessions) * submits
        killers = [asyncio.create_task(_killer(state, i, ws_root, kills // servers + (i < kills % servers), total,
                                               progress, random.Random(rng.random())))
                   for i in range(servers)]
        # sticky sessions: session i always talks to server i % servers, and reconnects there after a kill
        results = await asyncio.gather(*(review(urls[i % servers], s, submits, progress)
                                         for i, s in enumerate(sessions)), return_exceptions=True)
        state["done"] = True  # a killer whose next point never came (a short run) stops; one restarting finishes
        killer_errors = [k for k in await asyncio.gather(*killers, return_exceptions=True) if k is not None]
    finally:
        for proc in state["procs"]:
            stop_server(proc)
    state["errors"] = [f"{s.name}: {type(r).__name__}: {r}" for s, r in zip(sessions, results, strict=True)
                       if isinstance(r, BaseException)]
    state["errors"] += [f"killer: {type(e).__name__}: {e}" for e in killer_errors]
    return sessions, state


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster (tests/pg_cluster.py), its app database's URL; stopped and removed after."""
    from tests.pg_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster.url


def run(sessions: int = 20, submits: int = 500, kills: int = 3, seed_: int = 0,
        workspace: Path | None = None, database: str | None = None, servers: int = 1) -> Result:
    """Seed a workspace (its tables in the PostgreSQL `database` when given, which must be empty or freshly
    migrated), run the sessions against `servers` servers killed `kills` times in all, and check the database."""
    from rankloop.workspace import init_workspace

    if servers > 1 and not database:
        raise ValueError("several servers serve one workspace only on PostgreSQL (--database or --postgres)")
    tmp = None if workspace else Path(tempfile.mkdtemp(prefix="rankloop-durability-"))
    ws = init_workspace(workspace or tmp / "ws", database=database)
    try:
        accounts = seed(ws.db, sessions, submits)
        t0 = time.perf_counter()
        done, state = asyncio.run(_run(ws.root, accounts, submits, kills, seed_, ws.root, servers))
        wall = time.perf_counter() - t0
        problems = list(state["errors"])
        try:
            counts, found = check(ws.db, done)
            problems += found
            opens = True
        except Exception as e:  # reported, not raised: the figures still print
            counts = {"stored": 0, "lost": 0, "duplicates": 0, "unacked_stored": 0, "unexplained": 0,
                      "overfilled": 0, "double_leases": 0}
            problems.append(f"the database did not open cleanly: {e}")
            opens = False
        refused = [r for s in done for r in s.refused]
        problems += refused
        short = [s.name for s in done if len(s.acked) < submits and not s.queue_empty]
        if short:
            problems.append(f"sessions that stopped short: {short}")
        if state["kills"] < kills:
            problems.append(f"only {state['kills']} of {kills} kills happened")
        return Result(
            sessions=sessions, submits=submits, attempted=sum(s.attempted for s in done),
            acknowledged=sum(len(s.acked) for s in done), refused=refused, kills=state["kills"],
            kills_survived=state["restarts"] if not state["errors"] else 0,
            reconnects=sum(s.reconnects for s in done), retries=sum(s.retries for s in done), wall_s=wall,
            opens_cleanly=opens, problems=problems, backend="postgresql" if database else "duckdb",
            servers=servers, kills_by_server=state["kills_by_server"], **counts,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20, help="Concurrent reviewer sessions (one account each).")
    ap.add_argument("--submits", type=int, default=500, help="Acknowledged submits each session makes.")
    ap.add_argument("--kills", type=int, default=3,
                    help="Times a server is killed with SIGKILL and restarted, in all (spread over the servers).")
    ap.add_argument("--seed", type=int, default=0, help="Seed for the kill moments.")
    ap.add_argument("--workspace", type=Path, help="Workspace folder to create and keep (default: a temporary one).")
    ap.add_argument("--database", help="postgresql://USER@HOST:PORT/DB: the workspace's tables live there (an empty "
                                       "or freshly migrated database).")
    ap.add_argument("--postgres", action="store_true",
                    help="Without --database: a throw-away PostgreSQL cluster (tests/pg_cluster.py) for the run.")
    ap.add_argument("--servers", type=int, default=1, help="`rankloop serve` processes on the workspace "
                                                          "(more than one only on PostgreSQL).")
    args = ap.parse_args()
    if args.servers > 1 and not (args.database or args.postgres):
        ap.error("--servers above 1 needs --database or --postgres (one DuckDB file is served by one process)")
    cluster = throwaway_postgres() if args.postgres and not args.database else contextlib.nullcontext(args.database)
    with cluster as database:
        r = run(args.sessions, args.submits, args.kills, args.seed, args.workspace, database, args.servers)
    print(f"{r.sessions} sessions x {r.submits} submits on {r.backend}, {r.servers} server(s), {r.kills} SIGKILLs "
          f"(per server {r.kills_by_server}), wall {r.wall_s:.0f} s")
    print(f"submits attempted      {r.attempted}  (+{r.retries} retried after a reconnect, same key)")
    print(f"acknowledged           {r.acknowledged}")
    print(f"stored (acknowledged)  {r.stored}")
    print(f"duplicates             {r.duplicates}")
    print(f"lost                   {r.lost}")
    print(f"stored, ack lost       {r.unacked_stored}  (committed; the toast died with the server)")
    print(f"refused by the app     {len(r.refused)}")
    print(f"over-filled / 2 leases {r.overfilled} comparisons / {r.double_leases} reviewers")
    print(f"kills survived         {r.kills_survived} of {r.kills}  ({r.reconnects} reconnects)")
    print(f"database opens cleanly {'yes' if r.opens_cleanly else 'NO'}")
    for p in r.problems:
        print("PROBLEM", p)
    sys.exit(0 if r.ok else 1)


if __name__ == "__main__":
    main()
