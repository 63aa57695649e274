"""Pairwise Bradley-Terry vs the ranking loss (`[reward] loss`, issue 17) on OpenAssistant's real K-way rankings.

The only OpenAssistant data shipped here is tests/fixtures/oasst_message_trees_first15.jsonl (15 message trees:
27 rankings of 2-6 replies, 78 replies, 83 pairs, no ties), so one split holds out a handful of prompts. This
trains the default reward model (the SmolLM2 probe) with each loss on several prompt splits (`seed`, the same
splits for both losses) and prints the held-out pairwise accuracy per split and pooled over splits.

    python scripts/reward_ranking_oasst.py [--seeds 10] [--eval-fraction 0.3] [--set FIELD=VALUE ...]

The CLI does the same, one split at a time:

    rankloop init WS && rankloop import pairs tests/fixtures/oasst_message_trees_first15.jsonl --format oasst -w WS
    rankloop train reward -w WS --loss ranking --set seed=S --set eval_fraction=0.3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
FIXTURE = ROOT / "tests" / "fixtures" / "oasst_message_trees_first15.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/rankloop-reward-oasst-ranking"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--eval-fraction", type=float, default=0.3)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()

    from rankloop.models import prepare_models
    from rankloop.workspace import init_workspace
    from reward.config import load_reward_config, parse_assignment
    from reward.train import train_reward_model
    from store.imports import import_pairs

    shutil.rmtree(args.workspace, ignore_errors=True)
    ws = init_workspace(args.workspace)
    counts = import_pairs(ws.db, FIXTURE, "oasst")
    prepare_models(ws)
    results: dict[str, list[dict]] = {"pairwise": [], "ranking": []}
    for seed in range(args.seeds):
        for loss in results:
            overrides = {**dict(parse_assignment(a) for a in args.assignments), "loss": loss, "seed": seed,
                         "eval_fraction": args.eval_fraction}
            config = load_reward_config(ws.config.extra, ws.root / "rankloop.toml", None, overrides)
            m = train_reward_model(ws, config, progress=False).metrics
            right = round(m.get("eval_accuracy", 0.0) * m.get("eval_pairs", 0))
            results[loss].append({"seed": seed, "eval_pairs": m.get("eval_pairs", 0), "right": right,
                                  "accuracy": m.get("eval_accuracy"), "penalty": m["penalty"],
                                  "train_pairs": m["train_pairs"]})
            print(json.dumps({"loss": loss, **results[loss][-1]}), flush=True)
    summary = {"data": str(FIXTURE.name), "imported": counts["comparisons"], "eval_fraction": args.eval_fraction,
               "seeds": args.seeds}
    for loss, rows in results.items():
        pairs, right = sum(r["eval_pairs"] for r in rows), sum(r["right"] for r in rows)
        accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
        summary[loss] = {"pooled_accuracy": round(right / max(pairs, 1), 4), "held_out_pairs": pairs,
                         "mean_split_accuracy": round(sum(accs) / max(len(accs), 1), 4),
                         "per_seed": [r["accuracy"] for r in rows]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
