"""How much of the HH harmless-base preference signal the offline backbones carry before any fine-tuning: linear
Bradley-Terry probes on frozen features (an experiment behind the README's "Reward models on real data"; not a
`rankloop` command).

For each feature set, every train and test response is embedded once with the backbone frozen; a linear reward
r = w . standardized(features) is fitted by L-BFGS on the Bradley-Terry loss with an L2 penalty; the penalty is
chosen by 5-fold cross-validation on the train file only, the probe refitted on all train pairs, and scored once on
the test pairs. Feature sets:

- minilm-response: all-MiniLM-L6-v2's own sentence embedding (mean of the tokens, normalized) of the response alone
- smol-last: SmolLM2-135M-Instruct's last hidden state at the last token of prompt + response (what its
  sequence-classification head sees)
- smol-response-mean: the mean of its last hidden states over the response tokens
- smol-middle-mean: the same over the middle layer's hidden states

    python scripts/reward_probe.py                 # all four (~30 min on 2 cores, SmolLM2 dominates)
    python scripts/reward_probe.py --features minilm-response
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
DATA = ROOT / "scripts" / "data"
TRAIN, TEST = (DATA / f"hh_rlhf_harmless_base.derived_from_test.{s}.jsonl.gz" for s in ("train", "eval"))
FEATURES = ("minilm-response", "smol-last", "smol-response-mean", "smol-middle-mean")
PENALTIES = (0.1, 0.3, 1.0, 3.0, 10.0)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def minilm_features(texts: list[str]):
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from reward.backbone import builtin_folder

    folder = builtin_folder("all-minilm-l6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    for i in range(0, len(texts), 32):
        enc = tokenizer(texts[i:i + 32], truncation=True, max_length=256, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
    return {"minilm-response": np.concatenate(out)}


def smol_features(prompts: list[str], responses: list[str], max_length: int = 384):
    """Per response: (last token, response mean, middle-layer response mean), one sequence at a time (no padding)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from rankloop.models import prepare_default_policy

    folder = prepare_default_policy()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    last, mean, middle = [], [], []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"][:max_length // 2]
        ids, n = (prompt_ids + response_ids)[-max_length:], len(response_ids)
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        top, mid = states[-1][0], states[len(states) // 2][0]
        last.append(top[-1].numpy())
        mean.append(top[-n:].mean(0).numpy())
        middle.append(mid[-n:].mean(0).numpy())
    return {"smol-last": np.array(last), "smol-response-mean": np.array(mean), "smol-middle-mean": np.array(middle)}


def fit_probe(diff, penalty: float, seed: int = 0):
    """The same L-BFGS Bradley-Terry fit as `rankloop train reward --set method=probe`."""
    from reward.probe import fit_weights

    return fit_weights(diff, penalty, seed)


def probe(train_c, train_r, test_c, test_r, folds: int = 5) -> dict:
    import numpy as np

    from reward.evaluate import wilson_interval

    both = np.concatenate([train_c, train_r])
    mu, sd = both.mean(0), both.std(0) + 1e-6
    diff = (train_c - mu) / sd - (train_r - mu) / sd
    test_diff = (test_c - mu) / sd - (test_r - mu) / sd
    fold = np.random.default_rng(0).permutation(len(diff)) % folds
    cv = {}
    for penalty in PENALTIES:
        right = [((diff[fold == k] @ fit_probe(diff[fold != k], penalty)) > 0).mean() for k in range(folds)]
        cv[penalty] = float(np.mean(right))
    best = max(cv, key=cv.get)
    hits = int(((test_diff @ fit_probe(diff, best)) > 0).sum())
    low, high = wilson_interval(hits, len(test_diff))
    return {"cv_accuracy": cv, "penalty": best, "test_accuracy": hits / len(test_diff), "test_low": low,
            "test_high": high, "test_pairs": len(test_diff)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", nargs="+", choices=FEATURES, default=list(FEATURES))
    parser.add_argument("--max-pairs", type=int, default=0, help="First N pairs of each file (0: all).")
    args = parser.parse_args()

    import numpy as np

    from reward.data import read_pairs_file

    frames = {name: read_pairs_file(path) for name, path in (("train", TRAIN), ("test", TEST))}
    if args.max_pairs:
        frames = {k: v.head(args.max_pairs) for k, v in frames.items()}
    features: dict[str, dict[str, np.ndarray]] = {}
    cpu: dict[str, float] = {}
    for part, frame in frames.items():
        prompts = [str(p) for p in frame["prompt_text"]]
        for side in ("chosen", "rejected"):
            texts = [str(t) for t in frame[side]]
            if "minilm-response" in args.features:
                started = _cpu()
                for key, value in minilm_features(texts).items():
                    features.setdefault(key, {})[f"{part}-{side}"] = value
                cpu["minilm"] = cpu.get("minilm", 0.0) + _cpu() - started
            if any(f.startswith("smol") for f in args.features):
                started = _cpu()
                for key, value in smol_features(prompts, texts).items():
                    features.setdefault(key, {})[f"{part}-{side}"] = value
                cpu["smol"] = cpu.get("smol", 0.0) + _cpu() - started
    results = {}
    print("| features | penalty (5-fold CV on train) | CV accuracy | test accuracy (95%) |")
    print("|---|---|---|---|")
    for name in args.features:
        f = features[name]
        r = probe(f["train-chosen"], f["train-rejected"], f["test-chosen"], f["test-rejected"])
        results[name] = r
        print(f"| {name} | {r['penalty']:g} | {r['cv_accuracy'][r['penalty']]:.3f} | {r['test_accuracy']:.3f} "
              f"({r['test_low']:.3f}–{r['test_high']:.3f}) |")
    print(f"feature extraction CPU minutes: { {k: round(v / 60, 1) for k, v in cpu.items()} }")
    print(json.dumps({"train_pairs": len(frames["train"]), "results": results, "cpu_s": cpu}, default=str))


if __name__ == "__main__":
    main()
