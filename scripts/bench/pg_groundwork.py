"""The figures behind docs/postgresql.md (issue 15, team mode on PostgreSQL), measured rather than guessed.

1. The throw-away test cluster's life (tests/pg_cluster.py): initdb, start, app database, stop; N times.
2. Statements per unit of work in today's DuckDB store: every `execute` of the queue's paths (login, next item,
   submit + next, save draft, undo) counted through a proxy around store.db's connections, one open per unit and
   in a holding process (`rankloop serve`).
3. PostgreSQL round trips on that cluster with psycopg 3 + psycopg_pool: a SELECT 1, and a lease taken the way the
   queue will (BEGIN; SELECT ... FOR UPDATE SKIP LOCKED; INSERT; COMMIT), p50/p95.

4. `--inventory`: the DuckDB-specific SQL per module of store/ (docs/postgresql.md, section 2) and nothing else.

    .venv/bin/python scripts/bench/pg_groundwork.py [--cycles 5] [--json out.json]
    .venv/bin/python scripts/bench/pg_groundwork.py --inventory

Nothing here changes the store: the counting proxy is installed in this process only.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.pg_cluster import running_cluster  # noqa: E402


def cluster_cycles(n: int) -> dict:
    out: dict[str, list[float]] = {}
    for _ in range(n):
        t = time.perf_counter()
        with running_cluster() as c:
            pass
        c.timings["total_s"] = time.perf_counter() - t
        for k, v in c.timings.items():
            out.setdefault(k, []).append(v)
    return {k: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)} for k, v in out.items()}


class _Counting:
    """Forwards to a DuckDB connection, counting execute() calls by their first SQL word."""

    def __init__(self, con, counter: Counter) -> None:
        self._con, self._counter = con, counter

    def execute(self, sql, *args, **kwargs):
        word = sql.strip().split(None, 1)[0].upper() if isinstance(sql, str) else "?"
        self._counter[word] += 1
        self._con.execute(sql, *args, **kwargs)
        return self

    def __getattr__(self, name):
        return getattr(self._con, name)


def statement_counts(held: bool) -> dict:
    import store.db as sdb
    from store import queue_cache
    from store.batch import Batch, Comparison, Prompt, Response, write_batch
    from store.migrations import migrate
    from store.queue import Answer, next_item, save_draft, submit_and_next, undo
    from store.users import add_user, login

    counter: Counter = Counter()
    original = sdb._connection

    @contextmanager
    def counting(path, timeout_s, counted):
        with original(path, timeout_s, counted) as con:
            yield _Counting(con, counter)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "rankloop.duckdb"
        migrate(db)
        batch = Batch()
        for i in range(200):
            batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"q{i}"}]))
            for j in range(2):
                batch.responses.append(Response(key=(i, j), prompt_key=i, text=f"a{i}.{j}", model_name="m"))
            batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, 0), (i, 1)],
                                                required_reviewers=2))
        with sdb.transaction(db) as con:
            write_batch(con, batch)
        add_user(db, "ann", "reviewer", "password ann", actor="bench")
        queue_cache.forget()
        sdb.hold(held)
        sdb._connection = counting
        steps: dict[str, dict] = {}
        try:
            def step(name, fn):
                counter.clear()
                result = fn()
                steps[name] = {"statements": sum(counter.values()), "by_kind": dict(counter)}
                return result

            rid = step("login", lambda: login(db, "ann", "password ann")).user.id
            item = step("next_item (first, cache built)", lambda: next_item(db, rid))
            step("save_draft", lambda: save_draft(db, item.lease_id, rid, {"ranks": {}}))
            answer = Answer(ranking=[[r] for r, _ in item.responses], time_spent_ms=1000)
            jid, item2 = step("submit_and_next (warm)",
                              lambda: submit_and_next(db, item.lease_id, rid, "ann", answer))
            answer2 = Answer(ranking=[[r] for r, _ in item2.responses], time_spent_ms=1000)
            jid2, item3 = step("submit_and_next (again)",
                               lambda: submit_and_next(db, item2.lease_id, rid, "ann", answer2))
            step("undo", lambda: undo(db, jid2, rid, "ann", release_lease_id=item3.lease_id))
        finally:
            sdb._connection = original
            sdb.hold(False)
            queue_cache.forget()
    return steps


def pg_round_trips(n: int) -> dict:
    import psycopg
    from psycopg_pool import ConnectionPool

    def pct(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"p50_ms": round(xs[len(xs) // 2] * 1e3, 3), "p95_ms": round(xs[int(len(xs) * 0.95)] * 1e3, 3)}

    out = {}
    with running_cluster() as c:
        with psycopg.connect(c.url, autocommit=True) as con:
            con.execute("CREATE TABLE q (id BIGINT PRIMARY KEY, needed INT NOT NULL, taken INT NOT NULL DEFAULT 0)")
            con.execute("CREATE TABLE leases (id BIGSERIAL PRIMARY KEY, comparison_id BIGINT NOT NULL, "
                        "reviewer_id BIGINT NOT NULL, leased_at TIMESTAMP NOT NULL DEFAULT localtimestamp)")
            con.execute("INSERT INTO q SELECT i, 2 FROM generate_series(1, %s) AS i", (n,))
            t = []
            for _ in range(n):
                s = time.perf_counter()
                con.execute("SELECT 1").fetchone()
                t.append(time.perf_counter() - s)
            out["select_1_autocommit"] = pct(t)
        with ConnectionPool(c.url, min_size=2, max_size=2, open=True) as pool:
            t = []
            for r in range(n):
                s = time.perf_counter()
                with pool.connection() as con, con.transaction():
                    row = con.execute("SELECT id FROM q WHERE taken < needed ORDER BY id LIMIT 1 "
                                      "FOR UPDATE SKIP LOCKED").fetchone()
                    con.execute("INSERT INTO leases (comparison_id, reviewer_id) VALUES (%s, %s)", (row[0], r))
                    con.execute("UPDATE q SET taken = taken + 1 WHERE id = %s", (row[0],))
                t.append(time.perf_counter() - s)
            out["lease_txn_pool_4_statements"] = pct(t)
    return out


ROOT = Path(__file__).resolve().parents[2]
# Constructs of DuckDB's dialect (or of DuckDB's Python API) counted per module, over lines that are not comments.
CONSTRUCTS = {
    "current_localtimestamp()": r"current_localtimestamp\(\)",
    "$name parameter": r"\$r\b|\$round\b",
    "? IS NULL": r"\? IS NULL|\$round IS NULL",
    "to_minutes/to_seconds": r"\bto_(minutes|seconds)\(",
    "date_diff": r"\bdate_diff\(",
    "list() aggregate": r"\blist\((id|DISTINCT)",
    "list_contains": r"list_contains\(",
    "list_has_any": r"list_has_any\(",
    "unnest(?)": r"unnest\(\?\)",
    "json_extract_string": r"json_extract_string\(",
    "any_value": r"\bany_value\(",
    "hash()": r"\bhash\((id|t)\b",
    "duckdb_databases/tables()": r"duckdb_(databases|tables)\(\)",
    "INSERT OR REPLACE": r"INSERT OR REPLACE",
    "FROM range(?)": r"FROM range\(",
    "ATTACH/DETACH": r"\b(ATTACH|DETACH) ",
    "COPY FROM DATABASE": r"COPY FROM DATABASE",
    "con.register(frame)": r"\.register\(",
    ".df()/.fetchdf()": r"\.df\(\)|\.fetchdf\(\)",
    "duckdb exception classes": r"duckdb\.\w*(Exception|Error)\b",
    "JSON column": r"\bJSON NOT NULL|\bJSON,|\bJSON\s+--|ranking JSON|ADD COLUMN \w+ JSON",
    "DOUBLE": r"\bDOUBLE NOT NULL",
    "DEFAULT []": r"DEFAULT \[\]",
    "len() in DDL": r"CHECK \(len\(",
    "FILTER (WHERE) (portable)": r"FILTER \(WHERE",
    "RETURNING (portable)": r"\bRETURNING\b",
}
_SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|COPY|ATTACH|DETACH|BEGIN|COMMIT|ROLLBACK)\b")


def _sql_literals(source: str) -> int:
    """String constants and f-strings holding a SQL statement (docstrings excluded)."""
    tree = ast.parse(source)
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    count = 0
    for node in ast.walk(tree):
        if id(node) in docs or id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
        else:
            continue
        count += bool(_SQL_WORDS.search(text))
    return count


def inventory() -> dict:
    out = {}
    for path in sorted((ROOT / "store").rglob("*.py")):
        source = path.read_text()
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        found = {name: len(re.findall(rx, code)) for name, rx in CONSTRUCTS.items()}
        row = {"execute": code.count(".execute("), "sql_literals": _sql_literals(source), "?": code.count("?"),
               **{k: v for k, v in found.items() if v}}
        if row["execute"] or len(row) > 3:
            out[str(path.relative_to(ROOT))] = row
    totals: Counter = Counter()
    for row in out.values():
        totals.update(row)
    out["total"] = dict(totals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--round-trips", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--inventory", action="store_true", help="only the DuckDB-specific SQL per store module")
    args = ap.parse_args()
    if args.inventory:
        print(json.dumps(inventory(), indent=1))
        return
    result = {
        "cluster": cluster_cycles(args.cycles),
        "statements_per_unit_duckdb_one_open_per_unit": statement_counts(held=False),
        "statements_per_unit_duckdb_holding": statement_counts(held=True),
        "postgresql_round_trips": pg_round_trips(args.round_trips),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
