"""What simulated reviewers (`rankloop simulate`, `rankloop loop --simulate`) need from the store: their accounts,
how far a round has come, and what a round's comparisons hold (for oracle metrics).

Simulated reviewers are rows of kind 'simulated': active (so the queue serves them), without a password (they can
never log in: login only accepts kind 'human'). Their judgments go through the same queue functions as the app's
(`store.queue.next_item`, `submit_and_next`) with source 'simulated'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from store.db import read, write
from store.judgments import counted
from store.status import COMPLETION_SQL


def simulated_reviewers(db: str | Path, names: list[str]) -> dict[str, int]:
    """Ids of the named simulated reviewers, creating the missing ones; a name held by a human or imported
    reviewer is refused (a simulation never writes under a person's name)."""

    def work(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        rows = con.execute("SELECT name, id, kind FROM reviewers WHERE name = ANY(CAST(? AS VARCHAR[]))",
                           [list(names)]).fetchall()
        taken = sorted(name for name, _, kind in rows if kind != "simulated")
        if taken:
            raise ValueError(f"reviewers {taken}: taken by accounts that are not simulated; choose another prefix")
        found = {name: int(rid) for name, rid, _ in rows}
        for name in names:
            if name not in found:
                (rid,) = con.execute("SELECT nextval('reviewers_id')").fetchone()
                con.execute("INSERT INTO reviewers (id, name, role, kind, active) VALUES (?, ?, 'reviewer', "
                            "'simulated', true)", [rid, name])
                found[name] = int(rid)
        con.execute("UPDATE reviewers SET active = true WHERE kind = 'simulated' AND name = ANY(CAST(? AS VARCHAR[]))",
                    [list(names)])
        return found

    return write(db, work)


def round_progress(db: str | Path, round: int | None = None) -> dict[str, int]:
    """Comparisons of `round` (all when None): how many, how many complete, judgments needed and given."""

    def work(con: duckdb.DuckDBPyConnection) -> tuple:
        return con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE done >= required_reviewers), "
            "CAST(coalesce(sum(required_reviewers), 0) AS BIGINT), "
            "CAST(coalesce(sum(least(done, required_reviewers)), 0) AS BIGINT) "
            f"FROM ({COMPLETION_SQL}) s WHERE (CAST(? AS INTEGER) IS NULL OR round = ?)", [round, round]).fetchone()

    comparisons, complete, needed, given = read(db, work)
    return {"comparisons": int(comparisons), "complete": int(complete), "judgments_needed": int(needed),
            "judgments_given": int(given)}


def round_judgments(db: str | Path, round: int) -> list[dict[str, Any]]:
    """Counted judgments of one round with their reviewer, ranking and source (for the loop's checks)."""
    rows = read(db, lambda con: con.execute(
        "SELECT j.id, j.comparison_id, r.name, r.kind, j.ranking, j.source FROM judgments j "
        "JOIN reviewers r ON r.id = j.reviewer_id JOIN comparisons c ON c.id = j.comparison_id "
        f"WHERE {counted('j')} AND c.round = ? ORDER BY j.id", [round]).fetchall())
    return [{"id": int(i), "comparison_id": int(c), "reviewer": n, "kind": k,
             "ranking": json.loads(rk) if rk else None, "source": s} for i, c, n, k, rk, s in rows]


def round_responses(db: str | Path, round: int) -> list[dict[str, Any]]:
    """Every response queued in `round`'s comparisons, with its prompt (messages) and writer: the samples a
    round showed the reviewers."""
    rows = read(db, lambda con: con.execute(
        "SELECT r.id, c.id, p.messages, r.text, r.model_name FROM comparisons c "
        "JOIN prompts p ON p.id = c.prompt_id JOIN responses r ON r.id = ANY(c.response_ids) "
        "WHERE c.round = ? ORDER BY r.id", [round]).fetchall())
    return [{"response_id": int(r), "comparison_id": int(c), "messages": json.loads(m), "text": t, "model": n}
            for r, c, m, t, n in rows]


def people_judged(db: str | Path, round: int | None = None, min_people: int = 2) -> list[dict[str, Any]]:
    """Comparisons that `min_people` or more people ranked (counted rankings, not 'all bad', reviewers not of kind
    'simulated'), in id order, each with its prompt (messages), its responses (id, text) and the people's rankings
    by name: what `rankloop simulate --calibrate` fits the simulated reviewers to."""

    def work(con: duckdb.DuckDBPyConnection) -> tuple[list, list]:
        judged = con.execute(
            "SELECT j.comparison_id, r.name, j.ranking FROM judgments j JOIN reviewers r ON r.id = j.reviewer_id "
            f"JOIN comparisons c ON c.id = j.comparison_id WHERE {counted('j')} AND j.ranking IS NOT NULL "
            "AND NOT j.all_bad AND r.kind <> 'simulated' AND (CAST(? AS INTEGER) IS NULL OR c.round = ?) "
            "ORDER BY j.id", [round, round]).fetchall()
        people: dict[int, set[str]] = {}
        for cid, name, _ in judged:
            people.setdefault(int(cid), set()).add(name)
        keep = sorted(cid for cid, names in people.items() if len(names) >= min_people)
        texts = con.execute(
            "SELECT c.id, p.messages, r.id, r.text FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
            "JOIN responses r ON r.id = ANY(c.response_ids) WHERE c.id = ANY(CAST(? AS BIGINT[])) "
            "ORDER BY c.id, r.id", [keep]).fetchall() if keep else []
        kept = set(keep)
        return [row for row in judged if int(row[0]) in kept], texts

    judged, texts = read(db, work)
    out: dict[int, dict[str, Any]] = {}
    for cid, messages, rid, text in texts:
        item = out.setdefault(int(cid), {"comparison_id": int(cid), "messages": json.loads(messages),
                                         "responses": [], "rankings": {}})
        item["responses"].append((int(rid), text))
    for cid, name, ranking in judged:
        out[int(cid)]["rankings"][name] = json.loads(ranking)
    return [out[c] for c in sorted(out)]
