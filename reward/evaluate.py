"""How good is a reward model: held-out accuracy with a 95% interval, per round and per reviewer, calibration of
sigmoid(r_chosen - r_rejected), and the length-only baselines beside it; written as a report (markdown + PNG).

Conventions (exact, tested on a hand-made set):
  - a pair is right when r_chosen > r_rejected; a tie counts one half;
  - the interval is Wilson's score interval at 95% (training/stats.py);
  - calibration: p = sigmoid(r_c - r_r); confidence = max(p, 1 - p), right when p > 0.5 (a half at 0.5);
    confidences binned in [0.5, 0.6), ..., [0.9, 1.0]; ECE = sum over bins of (n_bin / n) * |accuracy - confidence|;
  - length baselines: "longer wins" scores a response by its length in characters (ties count one half), and
    "shorter wins" the reverse. Both are shown: which one a data set favours is part of what it is.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.workspace import WorkspaceLike
from training.stats import wilson_interval

CALIBRATION_EDGES = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def _right(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def reliability(chosen: list[float], rejected: list[float]) -> tuple[list[dict[str, Any]], float]:
    """(bins with count / mean confidence / accuracy, expected calibration error)."""
    bins = [{"low": lo, "high": hi, "count": 0, "confidence": 0.0, "accuracy": 0.0}
            for lo, hi in zip(CALIBRATION_EDGES, CALIBRATION_EDGES[1:], strict=False)]
    for c, r in zip(chosen, rejected, strict=True):
        p = _sigmoid(c - r)
        conf = max(p, 1 - p)
        index = min(int((conf - 0.5) * 10), len(bins) - 1)
        b = bins[index]
        b["count"] += 1
        b["confidence"] += conf
        b["accuracy"] += _right(p, 0.5)
    n = len(chosen)
    ece = 0.0
    for b in bins:
        if b["count"]:
            b["confidence"] /= b["count"]
            b["accuracy"] /= b["count"]
            ece += b["count"] / n * abs(b["accuracy"] - b["confidence"])
    return bins, ece


def pair_metrics(chosen: list[float], rejected: list[float], chosen_text: list[str],
                 rejected_text: list[str]) -> dict[str, Any]:
    """Accuracy, its 95% interval, mean score gap, ECE and both length baselines for one set of pairs."""
    n = len(chosen)
    right = sum(_right(c, r) for c, r in zip(chosen, rejected, strict=True))
    longer = sum(_right(len(c), len(r)) for c, r in zip(chosen_text, rejected_text, strict=True))
    low, high = wilson_interval(right, n)
    _, ece = reliability(chosen, rejected) if n else ([], 0.0)
    return {
        "pairs": n, "accuracy": right / n if n else None, "accuracy_low": low, "accuracy_high": high,
        "mean_gap": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n if n else None,
        "ece": ece,
        "length_longer_accuracy": longer / n if n else None,
        "length_shorter_accuracy": (n - longer) / n if n else None,
    }


def group_metrics(groups: list[Any], chosen: list[float], rejected: list[float]) -> list[dict[str, Any]]:
    """Accuracy with interval per group value (a round, a reviewer), groups in sorted order."""
    by: dict[Any, list[float]] = {}
    for g, c, r in zip(groups, chosen, rejected, strict=True):
        by.setdefault(g, []).append(_right(c, r))
    out = []
    for g in sorted(by, key=str):
        marks = by[g]
        low, high = wilson_interval(sum(marks), len(marks))
        out.append({"group": g, "pairs": len(marks), "accuracy": sum(marks) / len(marks), "low": low, "high": high})
    return out


def score_pairs(model: Any, tokenizer: Any, pairs: Any, max_length: int, append_eos: bool,
                batch_size: int = 16, pair: bool = False) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of a pairs frame (prompt_text / prompt_messages, chosen, rejected)."""
    from reward.data import prompt_string
    from reward.score import score_texts

    prompts = [prompt_string(t, m, tokenizer) for t, m in zip(pairs["prompt_text"], pairs["prompt_messages"],
                                                              strict=True)]
    chosen = score_texts(model, tokenizer, prompts, list(pairs["chosen"]), max_length, append_eos, batch_size, pair)
    rejected = score_texts(model, tokenizer, prompts, list(pairs["rejected"]), max_length, append_eos, batch_size,
                           pair)
    return chosen, rejected


@dataclass
class RewardEvaluation:
    run_id: int
    model: str
    report_dir: Path
    metrics: dict[str, Any]
    by_round: list[dict[str, Any]]
    by_reviewer: list[dict[str, Any]]


def _held_out_pairs(ws: WorkspaceLike, row: Any) -> Any:
    from reward.config import config_from_dict
    from store.runs import get_run
    from training.snapshot import run_rows

    if row.run_id is None:
        raise ValueError(f"model {row.name!r} has no training run in this workspace: evaluate it with --pairs FILE")
    run = get_run(ws.db, row.run_id)
    config = config_from_dict(run.config["config"], where=f"run {run.id} config: ")
    pairs = run_rows(ws.db, run, config)
    held = pairs[pairs["part"] == "eval"]
    if held.empty:
        raise ValueError(f"model {row.name!r}: its training run held out no pairs; evaluate it with --pairs FILE")
    return held, Path(run.output_path) if run.output_path else None


def evaluate_reward_model(ws: WorkspaceLike, model: str, pairs_file: str | Path | None = None, batch_size: int = 16,
                          device: str | None = None, max_pairs: int = 0) -> RewardEvaluation:
    """Score held-out pairs (the training run's held-out prompts, or `pairs_file`), write the report under the
    training run's folder, and record an evaluation run row."""
    from reward.data import read_pairs_file
    from reward.report import write_report
    from reward.score import RewardScorer
    from store.models import get_model
    from store.runs import finish_run
    from training.runs import closed_on_error, open_run

    row = get_model(ws.db, model)
    if pairs_file is not None:
        pairs, run_folder = read_pairs_file(pairs_file), None
        if row.run_id is not None:
            from store.runs import get_run

            run_folder = Path(get_run(ws.db, row.run_id).output_path or ws.runs_dir)
    else:
        pairs, run_folder = _held_out_pairs(ws, row)
    if max_pairs:
        pairs = pairs.head(max_pairs)
    source = str(pairs_file) if pairs_file else f"held-out prompts of run {row.run_id}"
    run_config = {"model": row.name, "pairs_file": str(pairs_file) if pairs_file else None}
    run_id, report_dir = open_run(ws, "reward-eval", run_config, {"source": source, "pairs": len(pairs)},
                                  prefix="eval", parent=run_folder)
    with closed_on_error(ws.db, run_id):
        started = time.monotonic()
        scorer = RewardScorer.from_row(row, device=device, batch_size=batch_size)
        chosen, rejected = scorer.score_pairs(pairs)
        metrics = pair_metrics(chosen, rejected, list(pairs["chosen"]), list(pairs["rejected"]))
        metrics["seconds"] = round(time.monotonic() - started, 1)
        by_round = group_metrics(list(pairs["round"]), chosen, rejected) if "round" in pairs else []
        by_reviewer = group_metrics(list(pairs["reviewer"]), chosen, rejected) if "reviewer" in pairs else []
        bins, _ = reliability(chosen, rejected)
        report_dir.mkdir(parents=True, exist_ok=True)
        write_report(report_dir, row.name, source, metrics, by_round, by_reviewer, bins)
        (report_dir / "metrics.json").write_text(json.dumps(
            {"model": row.name, "source": source, "overall": metrics, "by_round": by_round,
             "by_reviewer": by_reviewer, "calibration": bins}, indent=2, default=str), encoding="utf-8")
        finish_run(ws.db, run_id, "succeeded", metrics={**metrics, "by_round": by_round, "by_reviewer": by_reviewer})
    return RewardEvaluation(run_id, row.name, report_dir, metrics, by_round, by_reviewer)
