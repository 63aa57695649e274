"""What is in a workspace, in numbers: the `rankloop status` report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.db import read
from store.migrations import schema_version

# A comparison is complete once enough distinct reviewers gave a judgment that is not a skip.
COMPLETION_SQL = """
    SELECT c.id, c.round, c.required_reviewers,
           count(DISTINCT j.reviewer_id) FILTER (WHERE j.id IS NOT NULL AND NOT j.skipped) AS done
    FROM comparisons c LEFT JOIN judgments j ON j.comparison_id = c.id
    GROUP BY c.id, c.round, c.required_reviewers
"""


def workspace_status(db: str | Path) -> dict[str, Any]:
    def work(con) -> dict[str, Any]:
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        rounds: dict[int, dict[str, int]] = {}
        for rnd, pending, complete in con.execute(
            f"SELECT round, count(*) FILTER (WHERE done < required_reviewers), "
            f"count(*) FILTER (WHERE done >= required_reviewers) FROM ({COMPLETION_SQL}) GROUP BY round ORDER BY round"
        ).fetchall():
            rounds[int(rnd)] = {"comparisons_pending": pending, "comparisons_complete": complete, "judgments": 0}
        for rnd, n, skipped, all_bad in con.execute(
            "SELECT c.round, count(*), count(*) FILTER (WHERE j.skipped), count(*) FILTER (WHERE j.all_bad) "
            "FROM judgments j JOIN comparisons c ON c.id = j.comparison_id GROUP BY c.round"
        ).fetchall():
            rounds.setdefault(int(rnd), {"comparisons_pending": 0, "comparisons_complete": 0})
            rounds[int(rnd)].update({"judgments": n, "skipped": skipped, "all_bad": all_bad})
        models = [
            {"name": n, "kind": k, "round": r, "parent_id": p, "path": path, "adapter_path": a}
            for n, k, r, p, path, a in con.execute(
                "SELECT name, kind, round, parent_id, path, adapter_path FROM models ORDER BY id"
            ).fetchall()
        ]
        splits = dict(con.execute("SELECT split, count(*) FROM prompts GROUP BY split ORDER BY split").fetchall())
        return {
            "schema_version": schema_version(con),
            "prompts": one("SELECT count(*) FROM prompts"),
            "prompts_by_split": splits,
            "responses": one("SELECT count(*) FROM responses"),
            "comparisons": one("SELECT count(*) FROM comparisons"),
            "comparisons_pending": sum(r["comparisons_pending"] for r in rounds.values()),
            "comparisons_complete": sum(r["comparisons_complete"] for r in rounds.values()),
            "judgments": one("SELECT count(*) FROM judgments"),
            "reviewers": one("SELECT count(*) FROM reviewers"),
            "rounds": {str(k): v for k, v in sorted(rounds.items())},
            "models": models,
            "runs": one("SELECT count(*) FROM runs"),
        }

    return read(db, work)
