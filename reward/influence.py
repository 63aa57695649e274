"""Reviewer influence: how the reward model's held-out accuracy changes when one reviewer's pairs are left out.

The default reward model is a linear probe on frozen features (reward/probe.py), so leaving a reviewer out costs one
L-BFGS fit on features already computed, not a training run. `leave_one_reviewer_out` does it on given features:
standardize with the train pairs' features, fit `w` on every train pair (`reward.probe.fit_weights`, the probe's own
Bradley-Terry fit and penalty), then once per reviewer without that reviewer's train pairs, and measure each fit on
the same held-out pairs. A reviewer's `gain` is accuracy without them minus accuracy with everyone: positive means
the model is better off without their judgments (careless, adversarial or simply different), negative that they
help.

`reviewer_influence(ws, model=...)` runs it for a probe reward model of the workspace: its training run's pair
settings, but per reviewer (`aggregate` off), split by prompt as training splits them; features from its frozen
backbone (kept as `features.npz` in the run folder and reused by the next run on the same model and rows). The
result is a run of kind `influence` whose folder holds `influence.json`, which the agreement page shows
(`store.agreement.latest_influence`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.agreement import INFLUENCE_FILE, INFLUENCE_KIND
from store.workspace import WorkspaceLike

FEATURES_FILE = "features.npz"


def _accuracy(diff: Any, w: Any) -> float:
    return float(((diff @ w) > 0).mean()) if len(diff) else 0.0


def leave_one_reviewer_out(chosen: Any, rejected: Any, reviewers: list[str], eval_chosen: Any, eval_rejected: Any,
                           penalty: float, seed: int = 0) -> dict[str, Any]:
    """Held-out pair accuracy of the probe fitted on every train pair and, per reviewer, without theirs.

    `chosen`/`rejected`: (N, d) features of the train pairs, `reviewers[i]` who gave pair i; `eval_*`: (M, d) of the
    held-out pairs. Returns accuracy (everyone), train and eval pair counts, and per reviewer (largest gain first):
    reviewer, train_pairs, accuracy_without, gain (= accuracy_without - accuracy)."""
    import numpy as np

    from reward.probe import fit_weights

    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if len(chosen) != len(reviewers) or len(rejected) != len(reviewers):
        raise ValueError(f"influence: {len(chosen)} chosen and {len(rejected)} rejected feature rows for "
                         f"{len(reviewers)} reviewers' pairs")
    if not len(eval_chosen):
        raise ValueError("influence: no held-out pairs to measure on (the split by prompt left none: set a larger "
                         "eval_fraction for the reward model, or collect judgments on more prompts)")
    sd = np.concatenate([chosen, rejected]).std(0) + 1e-6  # the mean cancels in chosen - rejected
    diff = (chosen - rejected) / sd
    held = (np.asarray(eval_chosen, dtype=np.float64) - np.asarray(eval_rejected, dtype=np.float64)) / sd
    names = np.array(reviewers, dtype=object)
    accuracy = _accuracy(held, fit_weights(diff, penalty, seed))
    rows = []
    for name in sorted(set(reviewers)):
        keep = names != name
        without = _accuracy(held, fit_weights(diff[keep], penalty, seed)) if keep.any() else None
        rows.append({"reviewer": name, "train_pairs": int((~keep).sum()), "accuracy_without": without,
                     "gain": None if without is None else round(without - accuracy, 6)})
    rows.sort(key=lambda r: (-(r["gain"] if r["gain"] is not None else float("-inf")), r["reviewer"]))
    return {"accuracy": accuracy, "train_pairs": len(diff), "eval_pairs": len(held), "penalty": penalty,
            "reviewers": rows}


@dataclass
class InfluenceResult:
    run_id: int
    model: str
    report_path: Path
    report: dict[str, Any]
    features_reused: bool
    seconds: float


def _pairs(ws: WorkspaceLike, model: Any) -> tuple[Any, dict[str, Any], Any]:
    """(per-reviewer pairs split by prompt, their snapshot record, the reward config) of the model's training run."""
    from dataclasses import replace

    from reward.config import config_from_dict
    from store.runs import get_run
    from training.snapshot import snapshot_rows

    if model.run_id is None:
        raise ValueError(f"model {model.name!r} has no training run recorded: influence needs the settings it "
                         "was trained with")
    raw = get_run(ws.db, model.run_id).config.get("config", {})
    config = replace(config_from_dict(raw, where=f"run {model.run_id} config: "), aggregate=False, max_pairs=0)
    pairs, snapshot = snapshot_rows(ws.db, config, "pairs")
    return pairs, snapshot, config


def _cached_features(ws: WorkspaceLike, model_id: int, sha256: str) -> dict[str, Any] | None:
    """Features an earlier influence run computed for the same model and rows."""
    import numpy as np

    from store.runs import list_runs

    for run in reversed(list_runs(ws.db, kind=INFLUENCE_KIND)):
        path = Path(run.output_path or "", FEATURES_FILE)
        if run.config.get("model_id") == model_id and run.data_snapshot.get("sha256") == sha256 and path.is_file():
            with np.load(path) as saved:
                return {k: saved[k] for k in saved.files}
    return None


def reviewer_influence(ws: WorkspaceLike, model: str | None = None, device: str | None = None,
                       progress: bool = False) -> InfluenceResult:
    """Leave-one-reviewer-out held-out accuracy of probe reward model `model` (default: the newest reward model),
    recorded as an `influence` run with `influence.json` in its folder."""
    import numpy as np

    from reward.backbone import read_meta
    from reward.probe import PROBE_FILE, Probe
    from store.models import newest_model
    from store.runs import finish_run
    from training.runs import closed_on_error, open_run
    from training.snapshot import parts

    started = time.monotonic()
    row = newest_model(ws.db, "reward", model)
    if row.kind != "reward" or not row.path:
        raise ValueError(f"model {row.name!r} is not a reward model with a folder")
    meta = read_meta(row.path)
    if meta.get("method") != "probe":
        raise ValueError(f"model {row.name!r} is a {meta.get('method')!r} reward model: influence refits the linear "
                         "probe, so it needs a probe model (method = 'probe', the default)")
    probe = Probe(**json.loads(Path(row.path, PROBE_FILE).read_text(encoding="utf-8")))
    pairs, snapshot, config = _pairs(ws, row)
    train, held = parts(pairs)
    record = {"model": row.name, "model_id": row.id, "reward_run_id": row.run_id, "penalty": probe.penalty,
              "seed": config.seed}
    run_id, run_dir = open_run(ws, INFLUENCE_KIND, record, {k: v for k, v in snapshot.items() if k != "left_out"})
    with closed_on_error(ws.db, run_id):
        cached = _cached_features(ws, row.id, snapshot["sha256"])
        if cached is None:
            features = _features(row.path, meta, probe, train, held, device or config.device, progress)
        else:
            features = cached
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez(run_dir / FEATURES_FILE, **features)
        report = leave_one_reviewer_out(features["train_chosen"], features["train_rejected"],
                                        [str(r) for r in train["reviewer"]], features["eval_chosen"],
                                        features["eval_rejected"], probe.penalty, config.seed)
        report = {"model": row.name, "model_id": row.id, **report}
        path = run_dir / INFLUENCE_FILE
        tmp = path.with_name(f".{INFLUENCE_FILE}.tmp")
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        tmp.replace(path)
    seconds = round(time.monotonic() - started, 2)
    top = report["reviewers"][0] if report["reviewers"] else {}
    finish_run(ws.db, run_id, "succeeded", metrics={
        "accuracy": report["accuracy"], "eval_pairs": report["eval_pairs"], "train_pairs": report["train_pairs"],
        "reviewers": len(report["reviewers"]), "largest_gain": top.get("gain"), "largest_gain_reviewer":
        top.get("reviewer"), "features_reused": cached is not None, "seconds": seconds})
    return InfluenceResult(run_id, row.name, path, report, cached is not None, seconds)


def _features(folder: str, meta: dict[str, Any], probe: Any, train: Any, held: Any, device: str | None,
              progress: bool) -> dict[str, Any]:
    """The probe's features of the train and held-out pairs, from its frozen backbone."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from reward.data import prompt_string
    from reward.probe import load_frozen_backbone, pair_features, quantize_int8
    from training.device import resolve_device

    device = "cpu" if probe.precision == "int8" else resolve_device(device)
    model = load_frozen_backbone(meta["base"], device)
    if probe.precision == "int8":
        model = quantize_int8(model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    out = {}
    with tqdm(total=2 * (len(train) + len(held)), disable=not progress, desc="influence: embedding responses") as bar:
        for part, frame in (("train", train), ("eval", held)):
            prompts = [prompt_string(t, m, tokenizer) for t, m in zip(frame["prompt_text"], frame["prompt_messages"],
                                                                      strict=True)]
            out[f"{part}_chosen"], out[f"{part}_rejected"] = pair_features(
                model, tokenizer, prompts, [str(x) for x in frame["chosen"]], [str(x) for x in frame["rejected"]],
                probe.max_length, probe.layer, lambda: bar.update(), reads=probe.reads)
    return out
