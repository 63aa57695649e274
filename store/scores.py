"""Reward-model scores: which responses to score, storing a score per response and model, and comparison
priorities set from the scores (the reward model's uncertainty), all in one transaction."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from store.audit import log_event
from store.db import read, write
from store.status import PENDING_SQL

# Parameters: round, round, pending. Every round when round is NULL; only pending comparisons when pending is true.
_IN_SCOPE = ("SELECT id, response_ids FROM comparisons WHERE (CAST(? AS INTEGER) IS NULL OR round = ?) "
             f"AND (NOT CAST(? AS BOOLEAN) OR id IN ({PENDING_SQL}))")


def responses_to_score(db: str | Path, round: int | None = None, pending: bool = False) -> pd.DataFrame:
    """Each response that is a candidate in a comparison of `round` (every round when None; with `pending`, only
    comparisons that still need reviewers), with its prompt: columns response_id, prompt_id, prompt_text,
    prompt_messages (a list of {role, content}), text."""
    sql = f"""
        WITH ids AS (SELECT DISTINCT unnest(response_ids) AS rid FROM ({_IN_SCOPE}) s)
        SELECT r.id AS response_id, r.prompt_id, p.text AS prompt_text, p.messages AS prompt_messages, r.text
        FROM ids JOIN responses r ON r.id = ids.rid JOIN prompts p ON p.id = r.prompt_id
        ORDER BY r.id"""
    frame = read(db, lambda con: con.execute(sql, [round, round, pending]).df())
    frame["prompt_messages"] = [json.loads(m) if isinstance(m, str) else m for m in frame["prompt_messages"]]
    return frame


def comparisons_to_prioritise(db: str | Path, round: int | None = None,
                              pending: bool = False) -> list[tuple[int, list[int]]]:
    """(comparison id, its response ids) for the comparisons of `round` (every round when None; with `pending`,
    only those that still need reviewers)."""
    rows = read(db, lambda con: con.execute(_IN_SCOPE + " ORDER BY id", [round, round, pending]).fetchall())
    return [(int(cid), [int(r) for r in rids]) for cid, rids in rows]


def save_scores(db: str | Path, model_id: int, scores: dict[int, float], priorities: dict[int, float] | None = None,
                actor: str = "cli") -> None:
    """Store (replace) each response's score under `model_id` and set the given comparison priorities, together."""
    score_frame = pd.DataFrame({"response_id": list(scores), "model_id": model_id,
                                "score": [float(v) for v in scores.values()]})
    priority_frame = pd.DataFrame({"id": list(priorities or {}), "priority": list((priorities or {}).values())},
                                  columns=["id", "priority"]).astype({"id": "int64", "priority": "float64"})

    def work(con: duckdb.DuckDBPyConnection) -> None:
        if not score_frame.empty:
            con.register("_scores", score_frame)
            con.execute("INSERT INTO response_scores (response_id, model_id, score) "
                        "SELECT response_id, model_id, score FROM _scores "
                        "ON CONFLICT (response_id, model_id) DO UPDATE SET score = excluded.score")
            con.unregister("_scores")
        if not priority_frame.empty:
            con.register("_priorities", priority_frame)
            con.execute("UPDATE comparisons SET priority = f.priority FROM _priorities f WHERE comparisons.id = f.id")
            con.unregister("_priorities")
        log_event(con, actor, "reward.score", {"model_id": model_id, "responses": len(score_frame),
                                               "comparisons_prioritised": len(priority_frame)})

    write(db, work)


def response_scores(db: str | Path, model_id: int, response_ids: list[int] | None = None) -> dict[int, float]:
    """The stored scores of one model, optionally only for some responses."""
    rows = read(db, lambda con: con.execute(
        "SELECT response_id, score FROM response_scores WHERE model_id = ? "
        "AND (CAST(? AS BIGINT[]) IS NULL OR response_id = ANY(CAST(? AS BIGINT[]))) ORDER BY response_id",
        [model_id, response_ids, response_ids or []]).fetchall())
    return {int(r): float(s) for r, s in rows}
