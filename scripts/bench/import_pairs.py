"""Benchmark: pairs/s of `import_pairs` (read and check the whole file, one transaction, bulk loads through pandas)
against a naive baseline that inserts the same rows one by one with `executemany`, in the same run.

    .venv/bin/python scripts/bench/import_pairs.py                       # 100,000 pairs, baseline on 1,000
    .venv/bin/python scripts/bench/import_pairs.py --pairs 20000 --baseline-pairs 1000

The pairs are synthetic TRL rows (standard strings, unique prompts of ~200 characters, answers of ~100). The
baseline runs on the first `--baseline-pairs` rows (it is slow); its rate in pairs/s is what is compared. It
parses the same JSON lines and writes the same five tables (prompts, responses, comparisons, reviewers,
judgments) in one transaction, but without the checks, so it is a generous baseline. CPU seconds (all threads)
are printed beside wall time: on a shared host they show what the wall clock hides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rankloop.workspace import init_workspace  # noqa: E402
from store.batch import prompt_hash  # noqa: E402
from store.db import transaction  # noqa: E402
from store.imports import import_pairs  # noqa: E402

WORDS = "the a model answer reward policy rank prefer human data train loss better worse quick slow why how".split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return [{"prompt": f"Question {i}: {text(35)}?", "chosen": " " + text(18), "rejected": " " + text(18)}
            for i in range(n)]


def naive_import(db: Path, lines: list[str]) -> None:
    """Row by row: parse each line, then `executemany` per table, all in one transaction."""
    prompts, responses, comparisons, judgments = [], [], [], []
    for i, line in enumerate(lines, start=1):
        rec = json.loads(line)
        messages = [{"role": "user", "content": rec["prompt"]}]
        prompts.append((i, rec["prompt"], json.dumps(messages), prompt_hash(messages, rec["prompt"]), "trl"))
        responses += [(2 * i, i, rec["chosen"], "trl"), (2 * i + 1, i, rec["rejected"], "trl")]
        comparisons.append((i, i, [2 * i, 2 * i + 1], "trl"))
        key = hashlib.sha256(line.encode()).hexdigest()
        judgments.append((i, i, 1, json.dumps([[2 * i], [2 * i + 1]]), f"naive:{key}", "trl"))
    with transaction(db) as con:
        con.execute("INSERT INTO reviewers (id, name, role, kind, active) VALUES (1, 'trl', 'reviewer', 'import', "
                    "false)")
        con.executemany("INSERT INTO prompts (id, text, messages, content_hash, source) VALUES (?, ?, ?, ?, ?)",
                        prompts)
        con.executemany("INSERT INTO responses (id, prompt_id, text, source) VALUES (?, ?, ?, ?)", responses)
        con.executemany("INSERT INTO comparisons (id, prompt_id, response_ids, source) VALUES (?, ?, ?, ?)",
                        comparisons)
        con.executemany("INSERT INTO judgments (id, comparison_id, reviewer_id, ranking, idempotency_key, source) "
                        "VALUES (?, ?, ?, ?, ?, ?)", judgments)


def count(db: Path, table: str) -> int:
    with transaction(db) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--baseline-pairs", type=int, default=1_000, help="Rows for the (slow) naive baseline.")
    ap.add_argument("--json", action="store_true", help="Also print the figures as one JSON line.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        lines = [json.dumps(r) for r in synthetic_rows(args.pairs)]
        data = tmp / "pairs.jsonl"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{args.pairs} synthetic TRL pairs, {data.stat().st_size / 1e6:.1f} MB of JSONL")

        ws = init_workspace(tmp / "bulk")
        started, cpu = time.perf_counter(), time.process_time()
        result = import_pairs(ws.db, data)
        bulk_s, bulk_cpu = time.perf_counter() - started, time.process_time() - cpu
        assert result["judgments"] == args.pairs == count(ws.db, "judgments"), result

        nb = min(args.baseline_pairs, args.pairs)
        ws_naive = init_workspace(tmp / "naive")
        started, cpu = time.perf_counter(), time.process_time()
        naive_import(ws_naive.db, lines[:nb])
        naive_s, naive_cpu = time.perf_counter() - started, time.process_time() - cpu
        assert count(ws_naive.db, "judgments") == nb

    bulk_rate, naive_rate = args.pairs / bulk_s, nb / naive_s
    print(f"import_pairs (bulk, checked):    {args.pairs:7d} pairs in {bulk_s:6.2f}s = {bulk_rate:9.0f} pairs/s "
          f"({bulk_cpu:.2f} CPU-s)")
    print(f"naive row-by-row executemany:    {nb:7d} pairs in {naive_s:6.2f}s = {naive_rate:9.0f} pairs/s "
          f"({naive_cpu:.2f} CPU-s)")
    print(f"speed-up: {bulk_rate / naive_rate:.1f}x (naive on {nb} pairs would take {args.pairs / naive_rate:.0f}s "
          f"for {args.pairs})")
    if args.json:
        print(json.dumps({"pairs": args.pairs, "bulk_s": round(bulk_s, 2), "bulk_cpu_s": round(bulk_cpu, 2),
                          "bulk_pairs_per_s": round(bulk_rate),
                          "baseline_pairs": nb, "naive_s": round(naive_s, 2), "naive_cpu_s": round(naive_cpu, 2),
                          "naive_pairs_per_s": round(naive_rate),
                          "speedup": round(bulk_rate / naive_rate, 1)}))


if __name__ == "__main__":
    main()
