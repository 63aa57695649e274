"""A batch of prompts, responses, comparisons and judgments, written to the workspace in one transaction.

Importers and the sampler build a `Batch` with local keys (any hashable) that tie rows together; `write_batch`
turns the keys into ids, reuses prompts already in the workspace (by content hash), creates reviewers named by
the source, and bulk-loads every table through pandas: one transaction, so a failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

Key = Any


@dataclass
class Prompt:
    key: Key
    messages: list[dict[str, str]]
    text: str | None = None
    source: str = "import"
    split: str = "train"
    tags: list[str] = field(default_factory=list)
    external_id: str | None = None


@dataclass
class Response:
    key: Key
    prompt_key: Key
    text: str
    source: str = "import"
    model_id: int | None = None
    model_name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


@dataclass
class Comparison:
    key: Key
    prompt_key: Key
    response_keys: list[Key]
    source: str = "import"
    round: int = 0
    required_reviewers: int = 1
    priority: float = 0.0
    external_id: str | None = None


@dataclass
class Judgment:
    comparison_key: Key
    reviewer: str
    idempotency_key: str
    ranking: list[list[Key]] | None = None  # ordered groups of response keys, best first
    all_bad: bool = False
    skipped: bool = False
    flags: list[str] = field(default_factory=list)
    edited_text: str | None = None
    rationale: str | None = None
    display_order: list[Key] | None = None
    time_spent_ms: int | None = None
    source: str = "import"


@dataclass
class Batch:
    prompts: list[Prompt] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    judgments: list[Judgment] = field(default_factory=list)


@dataclass
class BatchResult:
    prompts_new: int
    prompts_reused: int
    responses: int
    comparisons: int
    judgments: int
    reviewers_new: int
    comparison_ids: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "comparison_ids"}


def prompt_hash(messages: list[dict[str, str]], text: str | None) -> str:
    """Identity of a prompt: its messages, and its original text when it had one."""
    blob = json.dumps({"messages": messages, "text": text}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _ids(con: duckdb.DuckDBPyConnection, sequence: str, n: int) -> list[int]:
    if n == 0:
        return []
    sql = f"SELECT nextval('{sequence}') FROM generate_series(1, ?) ORDER BY 1"
    return [r[0] for r in con.execute(sql, [n]).fetchall()]


# Frame columns cast to their table's type on insert: JSON arrives as text, which PostgreSQL does not assign to a
# json column implicitly; a list column whose values are all empty or None has no element type to infer.
_CASTS = {"messages": "JSON", "params": "JSON", "ranking": "JSON", "tags": "VARCHAR[]", "flags": "VARCHAR[]",
          "response_ids": "BIGINT[]", "display_order": "BIGINT[]"}


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    con.register("_batch_frame", frame)
    try:
        cols = ", ".join(frame.columns)
        values = ", ".join(f"CAST({c} AS {_CASTS[c]})" if c in _CASTS else c for c in frame.columns)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {values} FROM _batch_frame")
    finally:
        con.unregister("_batch_frame")


def ensure_reviewers(
    con: duckdb.DuckDBPyConnection, names: set[str], kind: str = "import"
) -> tuple[dict[str, int], int]:
    """Ids of the named reviewers, creating the missing ones as `kind` reviewers (no password, cannot log in)."""
    if not names:
        return {}, 0
    rows = con.execute("SELECT name, id FROM reviewers WHERE name = ANY(CAST(? AS VARCHAR[]))",
                       [sorted(names)]).fetchall()
    found = dict(rows)
    missing = sorted(names - found.keys())
    for name, rid in zip(missing, _ids(con, "reviewers_id", len(missing)), strict=True):
        con.execute(
            "INSERT INTO reviewers (id, name, role, kind, active) VALUES (?, ?, 'reviewer', ?, false)",
            [rid, name, kind],
        )
        found[name] = rid
    return found, len(missing)


def write_batch(con: duckdb.DuckDBPyConnection, batch: Batch) -> BatchResult:
    """Write `batch` inside the caller's transaction. Keys must be consistent (checked by the builders)."""
    # Prompts: reuse by content hash, within the batch and against the workspace.
    hashes = {p.key: prompt_hash(p.messages, p.text) for p in batch.prompts}
    existing = dict(
        con.execute(
            "SELECT content_hash, id FROM prompts WHERE content_hash = ANY(CAST(? AS VARCHAR[]))",
            [sorted(set(hashes.values()))],
        ).fetchall()
    )
    new_prompts: dict[str, Prompt] = {}
    for p in batch.prompts:
        h = hashes[p.key]
        if h not in existing and h not in new_prompts:
            new_prompts[h] = p
    hash_ids = dict(existing)
    hash_ids.update(zip(new_prompts, _ids(con, "prompts_id", len(new_prompts)), strict=True))
    prompt_ids = {p.key: hash_ids[hashes[p.key]] for p in batch.prompts}
    _insert(
        con,
        "prompts",
        pd.DataFrame(
            {
                "id": [hash_ids[h] for h in new_prompts],
                "text": [p.text for p in new_prompts.values()],
                "messages": [json.dumps(p.messages, ensure_ascii=False) for p in new_prompts.values()],
                "content_hash": list(new_prompts),
                "source": [p.source for p in new_prompts.values()],
                "split": [p.split for p in new_prompts.values()],
                "tags": [list(p.tags) for p in new_prompts.values()],
                "external_id": [p.external_id for p in new_prompts.values()],
            }
        ),
    )

    response_ids = dict(
        zip([r.key for r in batch.responses], _ids(con, "responses_id", len(batch.responses)), strict=True)
    )
    _insert(
        con,
        "responses",
        pd.DataFrame(
            {
                "id": [response_ids[r.key] for r in batch.responses],
                "prompt_id": [prompt_ids[r.prompt_key] for r in batch.responses],
                "model_id": pd.array([r.model_id for r in batch.responses], dtype="Int64"),
                "model_name": [r.model_name for r in batch.responses],
                "text": [r.text for r in batch.responses],
                "source": [r.source for r in batch.responses],
                "params": [json.dumps(r.params, sort_keys=True) if r.params else "{}" for r in batch.responses],
                "seed": pd.array([r.seed for r in batch.responses], dtype="Int64"),
            }
        ),
    )

    comparison_ids = dict(
        zip([c.key for c in batch.comparisons], _ids(con, "comparisons_id", len(batch.comparisons)), strict=True)
    )
    _insert(
        con,
        "comparisons",
        pd.DataFrame(
            {
                "id": [comparison_ids[c.key] for c in batch.comparisons],
                "prompt_id": [prompt_ids[c.prompt_key] for c in batch.comparisons],
                "response_ids": [[response_ids[k] for k in c.response_keys] for c in batch.comparisons],
                "round": [c.round for c in batch.comparisons],
                "required_reviewers": [c.required_reviewers for c in batch.comparisons],
                "priority": [float(c.priority) for c in batch.comparisons],
                "source": [c.source for c in batch.comparisons],
                "external_id": [c.external_id for c in batch.comparisons],
            }
        ),
    )

    reviewer_ids, reviewers_new = ensure_reviewers(con, {j.reviewer for j in batch.judgments})
    js = batch.judgments
    _insert(
        con,
        "judgments",
        pd.DataFrame(
            {
                "id": _ids(con, "judgments_id", len(js)),
                "comparison_id": [comparison_ids[j.comparison_key] for j in js],
                "reviewer_id": [reviewer_ids[j.reviewer] for j in js],
                "ranking": [
                    None if j.ranking is None else json.dumps([[response_ids[k] for k in g] for g in j.ranking])
                    for j in js
                ],
                "all_bad": [j.all_bad for j in js],
                "skipped": [j.skipped for j in js],
                "flags": [list(j.flags) for j in js],
                "edited_text": [j.edited_text for j in js],
                "rationale": [j.rationale for j in js],
                "display_order": [
                    None if j.display_order is None else [response_ids[k] for k in j.display_order] for j in js
                ],
                "time_spent_ms": pd.array([j.time_spent_ms for j in js], dtype="Int64"),
                "idempotency_key": [j.idempotency_key for j in js],
                "source": [j.source for j in js],
            }
        ),
    )
    return BatchResult(
        prompts_new=len(new_prompts),
        prompts_reused=len(batch.prompts) - len(new_prompts),
        responses=len(batch.responses),
        comparisons=len(batch.comparisons),
        judgments=len(js),
        reviewers_new=reviewers_new,
        comparison_ids=[comparison_ids[c.key] for c in batch.comparisons],
    )
