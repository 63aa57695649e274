"""Reading prompts: all of them (PPO rollouts, policy evaluation), the ones still waiting for candidates (the
sampler), and the newest round."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from store.db import read


@dataclass
class PromptRow:
    id: int
    messages: list[dict[str, str]]
    text: str | None
    split: str
    source: str
    tags: list[str] = field(default_factory=list)


def prompts_without_comparisons(db: str | Path, limit: int | None = None, split: str | None = None) -> list[PromptRow]:
    """Prompts that no comparison uses yet, oldest first; at most `limit`, only `split` when given."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    def work(con: duckdb.DuckDBPyConnection) -> list[tuple]:
        return con.execute(
            "SELECT p.id, p.messages, p.text, p.split, p.source, p.tags FROM prompts p "
            "WHERE NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.prompt_id = p.id) "
            "AND (CAST(? AS VARCHAR) IS NULL OR p.split = ?) ORDER BY p.id LIMIT ?",
            [split, split, limit],
        ).fetchall()

    return [
        PromptRow(int(pid), json.loads(messages), text, sp, source, list(tags or []))
        for pid, messages, text, sp, source, tags in read(db, work)
    ]


def prompts_with_comparisons(con: duckdb.DuckDBPyConnection, prompt_ids: list[int]) -> set[int]:
    """Which of `prompt_ids` some comparison uses now (inside the caller's transaction)."""
    if not prompt_ids:
        return set()
    rows = con.execute(
        "SELECT DISTINCT prompt_id FROM comparisons WHERE prompt_id = ANY(CAST(? AS BIGINT[]))", [list(prompt_ids)]
    ).fetchall()
    return {int(r[0]) for r in rows}


def list_prompts(db: str | Path, splits: list[str] | None = None, limit: int = 0) -> list[PromptRow]:
    """Prompts of `splits` (all when empty), oldest first, at most `limit` (0: all)."""
    wanted = list(splits or [])

    def work(con) -> list[tuple]:
        sql = "SELECT id, messages, text, split, source, tags FROM prompts"
        params: list = []
        if wanted:
            sql += " WHERE split IN (" + ", ".join("?" for _ in wanted) + ")"
            params += wanted
        sql += " ORDER BY id"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return con.execute(sql, params).fetchall()

    return [PromptRow(int(pid), json.loads(m), text, sp, source, list(tags or []))
            for pid, m, text, sp, source, tags in read(db, work)]


def newest_round(db: str | Path) -> int | None:
    """The highest comparison round in the workspace (None when there are no comparisons)."""
    (value,) = read(db, lambda con: con.execute("SELECT max(round) FROM comparisons").fetchone())
    return None if value is None else int(value)
