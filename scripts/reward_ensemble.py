"""Does averaging several trained reward models beat each of them on the HH test pairs? (An experiment behind the
README's "Reward models on real data"; not a `rankloop` command.)

Give the model folders of finished `rankloop train reward` runs (e.g. `scripts/reward_real_data.py --data hh
--workspace WS --set seed=N` leaves WS/runs/reward-1/model). Each scores the 456 test pairs; the script prints each
model's accuracy and that of the mean score, raw and after standardizing each model's scores.

    python scripts/reward_ensemble.py WS0/runs/reward-1/model WS1/runs/reward-1/model WS2/runs/reward-1/model
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
TEST = ROOT / "scripts" / "data" / "hh_rlhf_harmless_base.derived_from_test.eval.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="Reward-model folders.")
    parser.add_argument("--pairs", type=Path, default=TEST)
    args = parser.parse_args()

    import numpy as np

    from reward.data import read_pairs_file
    from reward.score import RewardScorer

    pairs = read_pairs_file(args.pairs)
    scores = []
    for folder in args.models:
        chosen, rejected = RewardScorer(folder).score_pairs(pairs)
        scores.append((np.array(chosen), np.array(rejected)))
        print(f"{folder}: {np.mean(scores[-1][0] > scores[-1][1]):.3f}")

    def standardized(c: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        both = np.concatenate([c, r])
        return (c - both.mean()) / both.std(), (r - both.mean()) / both.std()

    for name, parts in (("mean score", scores), ("mean standardized score", [standardized(*s) for s in scores])):
        chosen = np.mean([c for c, _ in parts], axis=0)
        rejected = np.mean([r for _, r in parts], axis=0)
        print(f"ensemble of {len(parts)}, {name}: {np.mean(chosen > rejected):.3f} on {len(pairs)} pairs")


if __name__ == "__main__":
    main()
