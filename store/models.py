"""Model rows: every policy or reward model version, with its lineage (parent, round, training run, metrics)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store.db import read, write


@dataclass
class ModelRow:
    id: int
    name: str
    kind: str
    base: str | None
    path: str | None
    adapter_path: str | None
    parent_id: int | None
    round: int | None
    run_id: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: Any = None


_COLUMNS = "id, name, kind, base, path, adapter_path, parent_id, round, run_id, metrics, created_at"


def _row(r: tuple) -> ModelRow:
    return ModelRow(*r[:9], metrics=json.loads(r[9]) if r[9] else {}, created_at=r[10])


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def add_model(db: str | Path, name: str, kind: str, *, base: str | None = None, path: str | None = None,
              adapter_path: str | None = None, parent_id: int | None = None, round: int | None = None,
              run_id: int | None = None, metrics: dict[str, Any] | None = None) -> int:
    """Register a model version; names are unique. Returns its id."""
    if kind not in ("policy", "reward", "external"):
        raise ValueError(f"model kind must be 'policy', 'reward' or 'external', got {kind!r}")
    if not name.strip():
        raise ValueError("model name must not be empty")

    def work(con):
        if con.execute("SELECT 1 FROM models WHERE name = ?", [name]).fetchone():
            raise ValueError(f"a model named {name!r} already exists in this workspace")
        (mid,) = con.execute("SELECT nextval('models_id')").fetchone()
        con.execute(
            "INSERT INTO models (id, name, kind, base, path, adapter_path, parent_id, round, run_id, metrics) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [mid, name, kind, base, path, adapter_path, parent_id, round, run_id, json.dumps(metrics or {})],
        )
        return int(mid)

    return write(db, work)


def get_model(db: str | Path, name: str) -> ModelRow:
    rows = read(db, lambda con: con.execute(f"SELECT {_COLUMNS} FROM models WHERE name = ?", [name]).fetchall())
    if not rows:
        known = [m.name for m in list_models(db)]
        raise UnknownModel(f"no model named {name!r} in this workspace (known: {', '.join(known) or 'none'})")
    return _row(rows[0])


_NONE_YET = {
    "reward": "no reward model in this workspace yet: train one with `rankloop train reward`",
    "policy": "no policy in this workspace: run `rankloop models prepare` or train one",
}


def newest_model(db: str | Path, kind: str, name: str | None = None) -> ModelRow:
    """The model called `name`, or else the newest model of `kind` (an error saying how to make one if none)."""
    if name:
        return get_model(db, name)
    rows = list_models(db, kind=kind)
    if not rows:
        raise ValueError(_NONE_YET.get(kind, f"no {kind} model in this workspace yet"))
    return rows[-1]


def list_models(db: str | Path, kind: str | None = None) -> list[ModelRow]:
    def work(con):
        if kind is None:
            return con.execute(f"SELECT {_COLUMNS} FROM models ORDER BY id").fetchall()
        return con.execute(f"SELECT {_COLUMNS} FROM models WHERE kind = ? ORDER BY id", [kind]).fetchall()

    return [_row(r) for r in read(db, work)]
