"""The preference pairs a run trains on (reward models, DPO): a reproducible snapshot of the workspace's pairs,
split by prompt.

A snapshot is what the run row records: the filters, the newest judgment id it saw, the pair count and a hash of
the pair identities. `reproduce_snapshot` reads the same pairs again (for `--resume` and `eval reward`) and
refuses when they changed (a judgment retracted since). `config` is any training config with the pair-selection
fields (aggregate, rounds, models, reviewers, splits, min_agreement, max_pairs, eval_fraction, seed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd


def _split_of(prompt_key: Any, fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{prompt_key}".encode()).hexdigest()
    return "eval" if int(digest[:12], 16) / 16**12 < fraction else "train"


def split_by_prompt(pairs: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """'train' or 'eval' per pair, decided by a hash of its prompt: no prompt in both halves, and a prompt keeps
    its side as the workspace grows. With 2+ prompts, each side gets at least one."""
    keys = pairs["prompt_key"].astype(str)
    side = keys.map(lambda k: _split_of(k, fraction, seed))
    unique = sorted(keys.unique(), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    if len(unique) >= 2 and side.nunique() < 2:  # tiny sets: force one prompt to the missing side
        flip = unique[0] if (side == "train").all() else unique[-1]
        side[keys == flip] = "eval" if (side == "train").all() else "train"
    return side


def _pair_filter_kwargs(config: Any) -> dict[str, Any]:
    """The `store.pairs.PairFilter` arguments for the config's filters (as in `rankloop export pairs`)."""
    return {"round": list(config.rounds) or None, "model": list(config.models) or None,
            "reviewer": list(config.reviewers) or None, "split": list(config.splits) or None,
            "min_agreement": config.min_agreement}


def _read_pairs(db: str | Path, config: Any) -> pd.DataFrame:
    from store import pairs as store_pairs

    try:
        pair_filter = store_pairs.PairFilter(**_pair_filter_kwargs(config))
    except ValueError as e:
        raise ValueError(f"filters: {e}") from e
    if config.aggregate:
        frame = store_pairs.aggregate_pairs(db, pair_filter)
    else:
        frame = store_pairs.preference_pairs(db, pair_filter)
    return frame.reset_index(drop=True)


def _identity(frame: pd.DataFrame) -> list[tuple]:
    cols = [c for c in ("judgment_id", "comparison_id", "chosen_id", "rejected_id") if c in frame.columns]
    return sorted(tuple(int(v) if pd.notna(v) else -1 for v in row) for row in frame[cols].itertuples(index=False))


def _hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256(json.dumps(_identity(frame)).encode()).hexdigest()


def _newest_judgment(frame: pd.DataFrame) -> int:
    if "judgment_id" in frame.columns and len(frame):
        return int(frame["judgment_id"].max())
    if "judgment_ids" in frame.columns and len(frame):
        return int(max(max(ids) for ids in frame["judgment_ids"]))
    return 0


def _upto(frame: pd.DataFrame, max_judgment_id: int) -> pd.DataFrame:
    if "judgment_id" in frame.columns:
        return frame[frame["judgment_id"] <= max_judgment_id]
    if "judgment_ids" in frame.columns:
        return frame[[max(ids) <= max_judgment_id for ids in frame["judgment_ids"]]]
    return frame


def _finish(frame: pd.DataFrame, config: Any) -> pd.DataFrame:
    """Normalise the columns, cap at max_pairs (a seeded, deterministic subset) and mark the split."""
    frame = frame.copy()
    if "prompt_key" not in frame.columns:
        frame["prompt_key"] = frame["prompt_id"]
    for col in ("prompt_text", "prompt_messages"):
        if col not in frame.columns:
            frame[col] = None
    if "margin" not in frame.columns:
        frame["margin"] = 1.0
    if config.max_pairs and len(frame) > config.max_pairs:
        order = [hashlib.sha256(f"{config.seed}:{row}".encode()).hexdigest() for row in _identity_rows(frame)]
        frame = frame.assign(_order=order).sort_values("_order").head(config.max_pairs).drop(columns="_order")
    frame = frame.reset_index(drop=True)
    frame["part"] = split_by_prompt(frame, config.eval_fraction, config.seed).values
    return frame


def _identity_rows(frame: pd.DataFrame) -> list[str]:
    cols = [c for c in ("judgment_id", "comparison_id", "chosen_id", "rejected_id", "prompt_key") if c in frame]
    return ["|".join(str(v) for v in row) for row in frame[cols].itertuples(index=False)]


def take_snapshot(db: str | Path, config: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pairs a run trains on (column `part`: "train" or "eval") and the snapshot record that reproduces them."""
    raw = _read_pairs(db, config)
    if raw.empty:
        shown = {k: v for k, v in _pair_filter_kwargs(config).items() if v is not None}
        raise ValueError(f"no preference pairs in this workspace match the filters {shown or '(none)'}: "
                         "import or collect judgments first")
    pairs = _finish(raw, config)
    return pairs, describe_snapshot(pairs, config, source="workspace", max_judgment_id=_newest_judgment(raw),
                                    all_pairs_hash=_hash(raw))


def describe_snapshot(pairs: pd.DataFrame, config: Any, source: str, max_judgment_id: int = 0,
                      all_pairs_hash: str | None = None) -> dict[str, Any]:
    train, held = pairs[pairs["part"] == "train"], pairs[pairs["part"] == "eval"]
    rounds = sorted({int(r) for r in pairs["round"].dropna()}) if "round" in pairs else []
    return {
        "source": source, "aggregate": config.aggregate, "filters": _pair_filter_kwargs(config),
        "max_judgment_id": max_judgment_id, "max_pairs": config.max_pairs, "rounds": rounds,
        "split": {"by": "prompt", "eval_fraction": config.eval_fraction, "seed": config.seed},
        "pairs": len(pairs), "train_pairs": len(train), "eval_pairs": len(held),
        "train_prompts": int(train["prompt_key"].nunique()), "eval_prompts": int(held["prompt_key"].nunique()),
        "all_pairs_sha256": all_pairs_hash, "sha256": _hash(pairs),
    }


def reproduce_snapshot(db: str | Path, snapshot: dict[str, Any], config: Any) -> pd.DataFrame:
    """The same pairs (and split) as the snapshot recorded; an error when the workspace no longer has them."""
    raw = _upto(_read_pairs(db, config), int(snapshot.get("max_judgment_id", 0)))
    pairs = _finish(raw, config)
    if _hash(pairs) != snapshot.get("sha256"):
        raise ValueError(
            f"the workspace's pairs no longer match the run's snapshot ({len(pairs)} pairs now, "
            f"{snapshot.get('pairs')} recorded; a judgment was retracted or the filters changed): start a new run")
    return pairs


def parts(frame: pd.DataFrame, what: str = "training pairs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, held-out rows) of a split frame; no train rows is an error naming `what`."""
    train, held = frame[frame["part"] == "train"], frame[frame["part"] == "eval"]
    if train.empty:
        raise ValueError(f"no {what} after the split by prompt: collect them on more prompts")
    return train, held
