"""The rows a run trains on, one scheme for every trainer: a snapshot of the workspace's data, split by prompt,
saved in the run folder.

Kinds: "pairs" (reward models, DPO: `store.pairs`), "rankings" (a reward model with the ranking loss, see
`_rankings`), "sft" and "kto" (`store.labels`; SFT trains on them) and
"prompts" (PPO, RLOO, GRPO: the prompts it samples on). `take_snapshot(db, config, kind)` reads them: a frame (column
`part`: "train" or "eval") and the record the run row keeps (filters, counts, the newest judgment id, `sha256` of
the row identities). `training.runs.open_run(..., rows=frame)` writes the frame to `<run folder>/snapshot.parquet`
and adds the file and its sha256 to the record, so the run keeps its rows: `snapshot_rows(..., resume_from=RUN)`
(`--resume`) and `run_rows` (`eval reward`) read that file back, checked against both hashes, whatever was edited
or undone in the workspace since. A run recorded before the file existed is reproduced from the workspace
(`reproduce_snapshot`), which refuses when its rows changed. `config` is a training config with the selection
fields (aggregate, rounds, models, reviewers, splits, min_agreement, max_pairs, eval_fraction, seed; SFT: source;
prompts: splits, max_prompts).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

KINDS = ("pairs", "rankings", "sft", "kto", "prompts")
ROWS_FILE = "snapshot.parquet"


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
    kwargs = {"round": list(config.rounds) or None, "model": list(config.models) or None,
              "reviewer": list(config.reviewers) or None, "split": list(config.splits) or None,
              "min_agreement": config.min_agreement}
    for name in ("edited_first", "exclude_flagged"):  # issue 17: an edit ranks first; flagged reviewers left out
        if hasattr(config, name) and _filter_takes(name):
            kwargs[name] = getattr(config, name)  # PairFilter refuses a value that is not a bool
    return kwargs


def _filter_takes(name: str) -> bool:
    from dataclasses import fields

    from store.pairs import PairFilter

    return name in {f.name for f in fields(PairFilter)}


def _read_pairs(db: str | Path, config: Any, pair_filter: Any = None) -> pd.DataFrame:
    """The config's pairs; `pair_filter` (default: the config's) records who exclude_flagged left out."""
    from store import pairs as store_pairs

    try:
        pair_filter = pair_filter or store_pairs.PairFilter(**_pair_filter_kwargs(config))
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


def take_snapshot(db: str | Path, config: Any, kind: str = "pairs") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows a run trains on (column `part`: "train" or "eval") and the snapshot record that describes them."""
    if kind not in KINDS:
        raise ValueError(f"snapshot kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "prompts":
        return _prompts(db, config)
    if kind == "rankings":
        return _rankings(db, config)
    if kind != "pairs":
        return _labels(db, config, kind)
    try:
        f = _filter(config)
    except ValueError as e:
        raise ValueError(f"filters: {e}") from e
    raw = _read_pairs(db, config, f)
    if raw.empty:
        shown = {k: v for k, v in _pair_filter_kwargs(config).items() if v is not None}
        raise ValueError(f"no preference pairs in this workspace match the filters {shown or '(none)'}: "
                         "import or collect judgments first")
    pairs = _finish(raw, config)
    return pairs, describe_snapshot(pairs, config, source="workspace", max_judgment_id=_newest_judgment(raw),
                                    all_pairs_hash=_hash(raw), excluded=f.excluded_reviewers)


def describe_snapshot(pairs: pd.DataFrame, config: Any, source: str, max_judgment_id: int = 0,
                      all_pairs_hash: str | None = None, excluded: dict[str, float] | None = None) -> dict[str, Any]:
    """The record of a pairs snapshot; `excluded`: the flagged reviewers (name -> gold accuracy) left out."""
    train, held = pairs[pairs["part"] == "train"], pairs[pairs["part"] == "eval"]
    rounds = sorted({int(r) for r in pairs["round"].dropna()}) if "round" in pairs else []
    return {
        "source": source, "aggregate": config.aggregate, "filters": _pair_filter_kwargs(config),
        "max_judgment_id": max_judgment_id, "max_pairs": config.max_pairs, "rounds": rounds,
        "split": {"by": "prompt", "eval_fraction": config.eval_fraction, "seed": config.seed},
        "pairs": len(pairs), "train_pairs": len(train), "eval_pairs": len(held),
        "train_prompts": int(train["prompt_key"].nunique()), "eval_prompts": int(held["prompt_key"].nunique()),
        "all_pairs_sha256": all_pairs_hash, "sha256": _hash(pairs),
        **({"excluded_reviewers": dict(excluded)} if excluded is not None else {}),
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


def _filter(config: Any) -> Any:
    from store.pairs import PairFilter

    return PairFilter(**_pair_filter_kwargs(config))


def _labels(db: str | Path, config: Any, kind: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """SFT targets or KTO labels (`store.labels`), in a seeded order, capped at max_pairs, split by prompt."""
    from store.labels import kto_records, sft_records
    from store.pairs import read_scoped

    f = _filter(config)
    source = getattr(config, "source", "both")
    if kind == "sft":
        records, left = sft_records(read_scoped(db, f), f, config.aggregate, source)
    else:
        records, left = kto_records(read_scoped(db, f), f, config.aggregate)
    if not records:
        what = f"SFT rows (source {source!r})" if kind == "sft" else "KTO labels"
        raise ValueError(f"no {what} in this workspace match the filters: collect judgments "
                         f"{'with edits or a single best response' if kind == 'sft' else 'with rankings'} first")
    frame = pd.DataFrame(records)
    frame["prompt_key"] = frame["prompt_id"]
    frame["_id"] = [f"{r.get('judgment_id', r.get('judgment_ids'))}|{r.get('source', r.get('label'))}|"
                    f"{r.get('response_id') if kind == 'kto' else r['completion']}" for r in records]
    frame = frame.sort_values("_id", key=lambda s: s.map(lambda v: hashlib.sha256(
        f"{config.seed}:{v}".encode()).hexdigest())).reset_index(drop=True)
    if config.max_pairs:
        frame = frame.head(config.max_pairs).reset_index(drop=True)
    frame["part"] = split_by_prompt(frame, config.eval_fraction, config.seed).values
    record: dict[str, Any] = {"source": "workspace", "kind": kind, "aggregate": config.aggregate,
                              "filters": f.as_dict(), "rows": len(frame),
                              "train_rows": int((frame["part"] == "train").sum()),
                              "eval_rows": int((frame["part"] == "eval").sum()), "left_out": dict(left),
                              "sha256": digest(frame, kind),
                              "rounds": sorted({int(r) for r in frame["round"].dropna()})}
    if kind == "sft":
        record.update({"sft_source": source, "by_source": frame["source"].value_counts().to_dict()})
    return frame, record


def _rankings(db: str | Path, config: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Kind "rankings" (`reward.config` loss "ranking"): the train part is one row per counted ranking
    (`store.rankings`, column `row` = "ranking"), the held-out part is the pairs snapshot's held-out pairs
    (`row` = "pair"), so held-out accuracy is measured on exactly the pairs a pairwise run holds out.

    Both come from one read of the judgments. The split is the pairs snapshot's (`_finish`: the same prompts on the
    same side as a pairwise run); a prompt with rankings but no pair (all tied) goes by its own hash. `max_pairs`
    caps the pairs as for a pairwise run, and then the train rankings are the ones behind the kept train pairs (on
    tie-free pairs, K = 2, the same judgments as the pairwise run)."""
    from store import pairs as store_pairs
    from store.rankings import ranking_records, rankings_frame

    try:
        f = _filter(config)
    except ValueError as e:
        raise ValueError(f"filters: {e}") from e
    fb = store_pairs.read_scoped(db, f)
    if config.aggregate:
        records, _ = store_pairs.aggregated_records(fb, f)
        columns = store_pairs.AGGREGATE_COLUMNS
    else:
        records, _ = store_pairs.per_reviewer_records(fb, f)
        columns = store_pairs.PER_REVIEWER_COLUMNS
    raw = pd.DataFrame(records, columns=columns)
    raw["prompt_text"] = pd.Series([r["prompt_text"] for r in records], dtype=object, index=raw.index)
    ranked, left = ranking_records(fb, f)
    rankings = rankings_frame(ranked)
    if raw.empty or rankings.empty:
        shown = {k: v for k, v in _pair_filter_kwargs(config).items() if v is not None}
        raise ValueError(f"no {'preference pairs' if raw.empty else 'rankings'} in this workspace match the "
                         f"filters {shown or '(none)'}: import or collect judgments first")
    pairs = _finish(raw, config)
    side = dict(zip(pairs["prompt_key"].astype(str), pairs["part"], strict=False))
    rankings["prompt_key"] = rankings["prompt_id"]
    rankings["part"] = [side.get(str(k)) or _split_of(str(k), config.eval_fraction, config.seed)
                        for k in rankings["prompt_key"]]
    train = rankings[rankings["part"] == "train"]
    if config.max_pairs and len(raw) > config.max_pairs:
        kept = pairs[pairs["part"] == "train"]
        behind = set(kept["judgment_id"].astype(int)) if "judgment_id" in kept else \
            {int(i) for ids in kept["judgment_ids"] for i in ids}
        train = train[train["judgment_id"].isin(behind)]
    # In the pairs' order (a max_pairs cap shuffles them by a seeded hash): a ranking where its judgment's first
    # pair is, rankings without a pair last. On two untied answers the probe's CV folds are then the pairwise
    # run's, so the two losses give the same figures there (docs/experiments.md).
    kept = pairs[pairs["part"] == "train"]
    first = [ids[0] if len(ids) else -1 for ids in kept["judgment_ids"]] if "judgment_ids" in kept else \
        list(kept["judgment_id"])
    where: dict[int, int] = {}
    for i, jid in enumerate(first):
        if pd.notna(jid):
            where.setdefault(int(jid), i)
    order = [where.get(int(j), len(first)) for j in train["judgment_id"]]
    train = train.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
    frame = pd.concat([train.assign(row="ranking"), pairs[pairs["part"] == "eval"].assign(row="pair")],
                      ignore_index=True)
    for col in ("prompt_text",):  # concat may turn a missing text into NaN
        frame[col] = pd.Series([t if isinstance(t, str) else None for t in frame[col]], dtype=object,
                               index=frame.index)
    record = describe_snapshot(pairs, config, source="workspace", max_judgment_id=_newest_judgment(raw),
                               all_pairs_hash=_hash(raw), excluded=f.excluded_reviewers)
    record.update({
        "kind": "rankings", "rankings": len(train),
        "tied_rankings": int(sum(len(set(g)) < len(g) for g in train["groups"])),
        "edited_rankings": int(train["edited"].sum()),
        "max_items": int(max((len(g) for g in train["groups"]), default=0)),
        "left_out": dict(left), "sha256": digest(frame, "rankings"),
        "max_judgment_id": max(record["max_judgment_id"], int(rankings["judgment_id"].max())),
    })
    return frame, record


def _ranking_identity(frame: pd.DataFrame) -> list[list]:
    """Row identities of a "rankings" frame: a ranking row by its judgment, items and groups; a pair row as in
    `_identity`. Read back from parquet, ids are floats (NaN where a row has none) and lists are arrays."""
    def num(v: Any) -> int:
        return int(v) if v is not None and pd.notna(v) else -1

    out = []
    for row in frame.to_dict("records"):
        if row.get("row") == "ranking":
            out.append(["r", num(row["judgment_id"]), num(row["comparison_id"]),
                        [int(x) for x in row["response_ids"]], [int(x) for x in row["groups"]]])
        else:
            out.append(["p", num(row.get("judgment_id")), num(row["comparison_id"]), num(row["chosen_id"]),
                        num(row["rejected_id"])])
    return sorted(out, key=json.dumps)


def _prompts(db: str | Path, config: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The prompts a sampling trainer (PPO, RLOO, GRPO) draws from, all 'train'."""
    from store.prompts import list_prompts

    rows = list_prompts(db, config.splits, config.max_prompts)
    if not rows:
        raise ValueError(f"no prompts of splits {config.splits or 'any'} in this workspace: import prompts first")
    frame = pd.DataFrame({"prompt_id": [r.id for r in rows], "prompt_messages": [r.messages for r in rows],
                          "part": "train"})
    sha = digest(frame, "prompts")
    return frame, {"source": "workspace", "kind": "prompts", "prompts": len(rows), "splits": config.splits,
                   "prompt_ids_sha256": sha, "sha256": sha, "max_prompt_id": max(r.id for r in rows)}


def digest(frame: pd.DataFrame, kind: str = "pairs") -> str:
    """sha256 of the rows' identities (judgments, comparisons and responses; prompts for "prompts")."""
    if kind == "pairs":
        return _hash(frame)
    if kind == "rankings":
        return hashlib.sha256(json.dumps(_ranking_identity(frame)).encode()).hexdigest()
    if kind == "prompts":
        return hashlib.sha256(json.dumps([int(i) for i in frame["prompt_id"]]).encode()).hexdigest()
    return hashlib.sha256(json.dumps(sorted(frame["_id"])).encode()).hexdigest()


def _kind(snapshot: dict[str, Any]) -> str:
    return snapshot.get("kind") or ("sft" if "sft_source" in snapshot else "prompts"
                                    if "prompt_ids_sha256" in snapshot else "pairs")


def save_rows(run_dir: Path, frame: pd.DataFrame, snapshot: dict[str, Any]) -> dict[str, Any]:
    """Write `frame` to `<run_dir>/snapshot.parquet` (a temporary name, then renamed) unless the snapshot already
    names a file there (a resumed run keeps its rows); the snapshot with the file's name and sha256."""
    from store.export import file_sha256

    path = Path(run_dir) / ROWS_FILE
    if snapshot.get("rows_file") == ROWS_FILE and path.is_file():
        return snapshot
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ROWS_FILE}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {**snapshot, "rows_file": ROWS_FILE, "rows_file_sha256": file_sha256(path)}


def saved_rows(run_dir: Path, snapshot: dict[str, Any]) -> pd.DataFrame:
    """The rows a run saved, checked against the recorded file hash and row hash."""
    from store.export import file_sha256

    path = Path(run_dir) / snapshot["rows_file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run's data snapshot is missing from its folder")
    if file_sha256(path) != snapshot.get("rows_file_sha256"):
        raise ValueError(f"{path}: the run's data snapshot was changed after the run wrote it")
    frame = pd.read_parquet(path)
    if "prompt_text" in frame:  # a missing original text reads back as NaN: keep None, as the store gives it
        frame["prompt_text"] = pd.Series([t if isinstance(t, str) else None for t in frame["prompt_text"]],
                                         dtype=object, index=frame.index)
    kind = _kind(snapshot)
    if digest(frame, kind) != snapshot.get("prompt_ids_sha256" if kind == "prompts" else "sha256"):
        raise ValueError(f"{path}: its rows do not match the run's recorded snapshot")
    return frame


def run_rows(db: str | Path, run: Any, config: Any) -> pd.DataFrame:
    """The rows run `run` (a store.runs row) trained on: its saved file, else (a run from before the file) the
    workspace's rows reproduced, refused when they changed."""
    snap = run.data_snapshot
    if snap.get("rows_file"):
        return saved_rows(Path(run.output_path), snap)
    kind = _kind(snap)
    if kind == "pairs":
        return reproduce_snapshot(db, snap, config)
    frame, again = take_snapshot(db, config, kind)
    if again["sha256"] != snap.get("prompt_ids_sha256" if kind == "prompts" else "sha256"):
        raise ValueError(f"--resume: the workspace's {'prompts' if kind == 'prompts' else 'SFT rows'} no longer "
                         f"match run {run.id}'s snapshot")
    return frame


def snapshot_rows(db: str | Path, config: Any, kind: str = "pairs",
                  resume_from: int | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(rows, snapshot record) for a run: a new snapshot, or with `resume_from` the rows and record of that run."""
    if resume_from is None:
        return take_snapshot(db, config, kind)
    from store.runs import get_run

    run = get_run(db, resume_from)
    return run_rows(db, run, config), run.data_snapshot
