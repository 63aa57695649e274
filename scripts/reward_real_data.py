"""Reward-model figures on real human preferences (scripts/data): HH-RLHF harmless-base and UKPConvArg1Strict.

What it does, and the CLI commands that do the same:

    rankloop init WS
    rankloop import pairs scripts/data/<train file> --format hh -w WS
    rankloop train reward -w WS [--base B] [--max-steps N] [--set FIELD=VALUE ...]
    rankloop eval reward -w WS --pairs scripts/data/<eval file>

It prints the held-out accuracy (95% interval), both length baselines, and the wall and CPU time of training and
evaluation, as a markdown table row and as JSON. The CPU time counts every thread of this process, so it is a
fairer cost than wall time on a shared machine.

    python scripts/reward_real_data.py --data hh                    # the defaults: the SmolLM2 probe
    python scripts/reward_real_data.py --data hh --set probe_precision=int8
    python scripts/reward_real_data.py --data hh --base all-minilm-l6-v2 --set method=auto   # MiniLM fine-tuned
    python scripts/reward_real_data.py --data ukp --base all-minilm-l6-v2 --set method=auto --max-steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
DATA = ROOT / "scripts" / "data"
FILES = {
    "hh": ("hh_rlhf_harmless_base.derived_from_test.train.jsonl.gz",
           "hh_rlhf_harmless_base.derived_from_test.eval.jsonl.gz"),
    "ukp": ("ukpconvarg1_strict.train.jsonl.gz", "ukpconvarg1_strict.test.jsonl.gz"),
}


def _one_reviewer_per_row(path: Path, folder: Path) -> Path:
    """UKP repeats some argument pairs (same texts, same or opposite label: 134+ rows). rankloop refuses a reviewer
    judging one pair twice, so each row becomes its own reviewer (TRL rows with a `reviewer` field): every row of
    the file is trained on, as other trainers on this file do."""
    import gzip

    out = folder / (path.name.removesuffix(".jsonl.gz") + ".per-row.jsonl")
    with gzip.open(path, "rt", encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line, raw in enumerate(src, 1):
            row = json.loads(raw)
            row["reviewer"] = f"{row.get('source', 'ukp')}#{line}"
            dst.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(FILES), default="hh")
    parser.add_argument("--workspace", type=Path, default=None, help="Default: /tmp/rankloop-reward-<data>.")
    parser.add_argument("--base", default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--eval-max-pairs", type=int, default=0, help="Evaluate on the first N test pairs (0: all).")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()

    from rankloop.workspace import init_workspace
    from reward.config import load_reward_config, parse_assignment
    from reward.evaluate import evaluate_reward_model
    from reward.train import train_reward_model
    from store.imports import import_pairs

    train_file, eval_file = (DATA / name for name in FILES[args.data])
    ws = init_workspace(args.workspace or Path(f"/tmp/rankloop-reward-{args.data}"))
    if not (ws.root / ".imported").exists():
        if args.data == "ukp":
            counts = import_pairs(ws.db, _one_reviewer_per_row(train_file, ws.root), "trl")
        else:
            counts = import_pairs(ws.db, train_file, "hh")
        (ws.root / ".imported").write_text(json.dumps(counts, default=str), encoding="utf-8")
    overrides = dict(parse_assignment(a) for a in args.assignments)
    for key in ("base", "max_steps", "max_pairs"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    config = load_reward_config(ws.config.extra, ws.root / "rankloop.toml", None, overrides)
    if config.base == "smollm2-135m-instruct":
        from rankloop.models import prepare_models

        prepare_models(ws)

    wall, cpu = time.perf_counter(), _cpu()
    result = train_reward_model(ws, config, progress=sys.stderr.isatty())
    train_wall, train_cpu = time.perf_counter() - wall, _cpu() - cpu
    wall, cpu = time.perf_counter(), _cpu()
    ev = evaluate_reward_model(ws, result.model_name, pairs_file=eval_file, max_pairs=args.eval_max_pairs)
    eval_wall, eval_cpu = time.perf_counter() - wall, _cpu() - cpu

    m = ev.metrics
    row = {
        "data": args.data, "base": config.base, "method": config.method, "max_length": config.max_length,
        "steps": result.metrics["global_step"], "train_pairs": result.metrics["train_pairs"],
        "test_pairs": m["pairs"], "accuracy": round(m["accuracy"], 4),
        "ci95": [round(m["accuracy_low"], 4), round(m["accuracy_high"], 4)],
        "length_longer": round(m["length_longer_accuracy"], 4),
        "length_shorter": round(m["length_shorter_accuracy"], 4),
        "held_out_accuracy_in_training": result.metrics.get("eval_accuracy"),
        "train_wall_min": round(train_wall / 60, 1), "train_cpu_min": round(train_cpu / 60, 1),
        "eval_wall_min": round(eval_wall / 60, 1), "eval_cpu_min": round(eval_cpu / 60, 1),
        "accuracy_gain_per_train_cpu_min": round((m["accuracy"] - 0.5) / max(train_cpu / 60, 1e-9), 4),
        "report": str(ev.report_dir / "report.md"), "overrides": overrides,
    }
    print(f"| {row['data']} | {row['base']} ({row['method']}) | {row['steps']} | {row['accuracy']:.3f} "
          f"({row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}) | {row['length_longer']:.3f} / {row['length_shorter']:.3f} "
          f"| {row['train_wall_min']} ({row['train_cpu_min']} CPU) | {row['eval_wall_min']} |")
    print(json.dumps(row, default=str))


if __name__ == "__main__":
    main()
