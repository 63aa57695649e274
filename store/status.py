"""What is in a workspace, in numbers: the `rankloop status` report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.db import read
from store.judgments import LIVE_JUDGMENT, counted
from store.migrations import schema_version

# A comparison is complete once enough distinct reviewers gave a counted judgment (not a skip, not undone).
COMPLETION_SQL = f"""
    SELECT c.id, c.round, c.required_reviewers,
           count(DISTINCT j.reviewer_id) FILTER (WHERE j.id IS NOT NULL AND {counted('j')}) AS done
    FROM comparisons c LEFT JOIN judgments j ON j.comparison_id = c.id
    GROUP BY c.id, c.round, c.required_reviewers
"""
# The comparisons still pending: fewer distinct counted reviewers than they require.
PENDING_SQL = f"SELECT id FROM ({COMPLETION_SQL}) s WHERE done < required_reviewers"


def workspace_status(db: str | Path) -> dict[str, Any]:
    def work(con) -> dict[str, Any]:
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        rounds: dict[int, dict[str, int]] = {}
        for rnd, pending, complete in con.execute(
            f"SELECT round, count(*) FILTER (WHERE done < required_reviewers), "
            f"count(*) FILTER (WHERE done >= required_reviewers) FROM ({COMPLETION_SQL}) s "
            "GROUP BY round ORDER BY round"
        ).fetchall():
            rounds[int(rnd)] = {"comparisons_pending": pending, "comparisons_complete": complete, "judgments": 0}
        for rnd, n, skipped, all_bad in con.execute(
            "SELECT c.round, count(*), count(*) FILTER (WHERE j.skipped), count(*) FILTER (WHERE j.all_bad) "
            f"FROM judgments j JOIN comparisons c ON c.id = j.comparison_id WHERE {LIVE_JUDGMENT} GROUP BY c.round"
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
            "judgments": one(f"SELECT count(*) FROM judgments WHERE {LIVE_JUDGMENT}"),
            "reviewers": one("SELECT count(*) FROM reviewers"),
            "reviewers_with_judgments": one(
                f"SELECT count(DISTINCT reviewer_id) FROM judgments WHERE {LIVE_JUDGMENT}"
            ),
            "rounds": {str(k): v for k, v in sorted(rounds.items())},
            "models": models,
            "runs": one("SELECT count(*) FROM runs"),
        }

    return read(db, work)


def queue_overview(db: str | Path) -> dict[str, Any]:
    """The admin overview: comparisons by round and state, judgments per reviewer per day, time per judgment."""

    def work(con) -> dict[str, Any]:
        by_round = con.execute(
            f"""SELECT s.round, count(*) AS comparisons,
                   count(*) FILTER (WHERE s.done >= s.required_reviewers) AS complete,
                   count(*) FILTER (WHERE s.done < s.required_reviewers AND l.n > 0) AS in_progress,
                   count(*) FILTER (WHERE s.done < s.required_reviewers AND coalesce(l.n, 0) = 0) AS pending,
                   count(*) FILTER (WHERE g.comparison_id IS NOT NULL) AS gold
                FROM ({COMPLETION_SQL}) s
                LEFT JOIN (SELECT comparison_id, count(*) AS n FROM leases
                           WHERE closed_at IS NULL AND expires_at > localtimestamp GROUP BY 1) l
                       ON l.comparison_id = s.id
                LEFT JOIN gold_answers g ON g.comparison_id = s.id
                GROUP BY s.round ORDER BY s.round"""
        ).fetchdf()
        per_day = con.execute(
            f"""SELECT CAST(j.created_at AS DATE) AS day, r.name AS reviewer, count(*) AS judgments
                FROM judgments j JOIN reviewers r ON r.id = j.reviewer_id
                WHERE {counted('j')} AND r.kind = 'human' GROUP BY 1, 2 ORDER BY 1, 2"""
        ).fetchdf()
        per_reviewer = con.execute(
            f"""SELECT r.name AS reviewer, count(*) AS judgments,
                   count(*) FILTER (WHERE j.all_bad) AS all_bad,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY j.time_spent_ms) / 1000.0 AS median_seconds
                FROM judgments j JOIN reviewers r ON r.id = j.reviewer_id
                WHERE {counted('j')} AND r.kind = 'human' GROUP BY 1 ORDER BY 1"""
        ).fetchdf()
        (median_s,) = con.execute(
            f"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY time_spent_ms) / 1000.0 FROM judgments j "
            f"WHERE {counted('j')}"
        ).fetchone()
        return {"by_round": by_round, "per_day": per_day, "per_reviewer": per_reviewer, "median_seconds": median_s}

    return read(db, work)
