"""Which features should the default reward probe read? Variants chosen on the train split only (issue 17).

An experiment behind docs/experiments.md, not a `rankloop` command. For each seed it takes exactly the pairs and
the split by prompt that `rankloop train reward --set seed=S` takes (the same workspace import as
scripts/reward_real_data.py), computes every response's features ONCE (SmolLM2-135M-Instruct frozen, several layers,
mean and last-token pooling, read after the prompt and, with --response-only, without it), then for each variant
fits the same probe as `method = "probe"` (`reward.probe.fit_probe`: standardized, L2 penalty by 5-fold CV on the
train part) and reports

- `prompt-CV` variants: the penalty chosen by CV over folds of whole prompts (`reward.probe.cv_folds` with
  groups) on a wider grid, instead of folds of pairs; in UKP an argument appears in ~18 pairs of one debate, so
  pair folds share arguments and debates between the fit and the check;
- `held`: accuracy on the train split's own held-out prompts (10%), the selection figure;
- `test`: accuracy on the test file, printed for the record, never used to choose.

The selection rule is fixed before the run: the variant with the highest mean `held` over the seeds wins; it
replaces the default only if it also wins on the other data set.

    python scripts/reward_probe_variants.py --data ukp --response-only
    python scripts/reward_probe_variants.py --data hh --layers 8 15 22
    python scripts/reward_probe_variants.py --data hh --layers 11 15 19 --mlp

Features are cached in --cache (default /tmp/rankloop-probe-variants-<data>.npz), so a second call only refits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(ROOT / "scripts"))

from reward_real_data import DATA, FILES, _one_reviewer_per_row  # noqa: E402

POOL_SETS = ("mean", "last")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def load_frames(data: str, workspace: Path, seeds: list[int]) -> tuple[dict[int, tuple], object]:
    """{seed: (train part, held-out part)} as `rankloop train reward` splits them, and the test frame."""
    from rankloop.workspace import init_workspace
    from reward.config import load_reward_config
    from reward.data import read_pairs_file
    from store.imports import import_pairs
    from training.snapshot import parts, take_snapshot

    train_file, eval_file = (DATA / name for name in FILES[data])
    ws = init_workspace(workspace)
    if not (ws.root / ".imported").exists():
        if data == "ukp":
            import_pairs(ws.db, _one_reviewer_per_row(train_file, ws.root), "trl")
        else:
            import_pairs(ws.db, train_file, "hh")
        (ws.root / ".imported").write_text("1", encoding="utf-8")
    frames = {}
    for seed in seeds:
        config = load_reward_config(ws.config.extra, ws.root / "rankloop.toml", None, {"seed": seed})
        pairs, _ = take_snapshot(ws.db, config)
        frames[seed] = parts(pairs)
    return frames, read_pairs_file(eval_file)


class _Head:
    """A fitted nonlinear head: `rewards` as a `reward.probe.Probe` gives them, and the grid point CV chose."""

    def __init__(self, net, mean, sd, choice):
        self.net, self.mean, self.sd, self.choice = net, mean, sd, choice

    def rewards(self, x):
        import torch

        with torch.no_grad():
            return self.net(torch.tensor((x - self.mean) / self.sd, dtype=torch.float32)).squeeze(-1).numpy()


def _train_head(chosen, rejected, hidden: int, decay: float, epochs: int, seed: int) -> _Head:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    both = np.concatenate([chosen, rejected])
    mean, sd = both.mean(0), both.std(0) + 1e-6
    good = torch.tensor((chosen - mean) / sd, dtype=torch.float32)
    bad = torch.tensor((rejected - mean) / sd, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(good.shape[1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=decay)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(good), generator=order).split(64):
            loss = -torch.nn.functional.logsigmoid(net(good[batch]) - net(bad[batch])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return _Head(net.eval(), mean, sd, (hidden, decay, epochs))


def fit_mlp_head(chosen, rejected, groups: list[str], seed: int) -> _Head:
    """One hidden layer (GELU, dropout 0.2) trained with the Bradley-Terry loss; width, weight decay and epochs
    chosen by 5-fold CV over whole prompts (`reward.probe.cv_folds`), then refit on all the train part."""
    import numpy as np

    from reward.probe import cv_folds

    fold = cv_folds(len(chosen), 5, seed, groups)
    grid = [(h, d, e) for h in (32, 128) for d in (0.01, 0.1, 1.0) for e in (3, 10)]
    cv = {}
    for point in grid:
        right = []
        for k in range(5):
            test = fold == k
            if test.any() and (~test).any():
                head = _train_head(chosen[~test], rejected[~test], *point, seed)
                right.append(float((head.rewards(chosen[test]) > head.rewards(rejected[test])).mean()))
        cv[point] = float(np.mean(right))
    return _train_head(chosen, rejected, *max(grid, key=lambda p: cv[p]), seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(FILES), default="ukp")
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 11, 15, 19, 22, -1])
    parser.add_argument("--response-only", action="store_true", help="Also read each response without its prompt.")
    parser.add_argument("--minilm", action="store_true",
                        help="Also read each response with all-MiniLM-L6-v2 (mean of its last layer, with and without "
                             "the prompt) and try it beside SmolLM2's layers: a second backbone's view.")
    parser.add_argument("--mlp", action="store_true",
                        help="Also fit a small nonlinear head (one hidden layer, Bradley-Terry loss; width, weight "
                             "decay and epochs chosen by CV over folds of prompts) on L11+15+19: is the linear head "
                             "the limit?")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--variants", nargs="*", default=None, help="Only these variants (default: all).")
    args = parser.parse_args()

    import numpy as np
    from transformers import AutoTokenizer

    from rankloop.models import prepare_default_policy
    from reward.probe import fit_probe, load_frozen_backbone, response_feature_sets
    from store.rows import prompt_string

    folder = str(prepare_default_policy())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    frames, test = load_frames(args.data, args.workspace or Path(f"/tmp/rankloop-probe-variants-{args.data}"),
                               args.seeds)

    def keyed(frame) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        prompts = [prompt_string(t, m, tokenizer) for t, m in zip(frame["prompt_text"], frame["prompt_messages"],
                                                                  strict=True)]
        return ([(p, str(c)) for p, c in zip(prompts, frame["chosen"], strict=True)],
                [(p, str(r)) for p, r in zip(prompts, frame["rejected"], strict=True)])

    sides = {seed: (keyed(tr), keyed(he)) for seed, (tr, he) in frames.items()}
    test_sides = keyed(test)
    items: dict[tuple[str, str], int] = {}
    for part in [test_sides] + [s for pair in sides.values() for s in pair]:
        for side in part:
            for key in side:
                items.setdefault(key, len(items))
    keys = list(items)
    cache = args.cache or Path(f"/tmp/rankloop-probe-variants-{args.data}.npz")
    reads = [(layer, pool) for layer in args.layers for pool in POOL_SETS]
    feats: dict[str, np.ndarray] = {}
    # rows follow `keys`, which depend on the seeds, the data and the tokenizer's prompt format: a cache written
    # for other keys or another max_length would silently misalign, so it is read only when its digest matches
    digest = hashlib.sha256(json.dumps([keys, args.max_length]).encode()).hexdigest()
    if cache.exists():
        feats = dict(np.load(cache))
        if str(feats.pop("digest", "")) != digest:
            print(f"{cache}: written for other sequences or max_length; computing the features again", flush=True)
            feats = {}
    feats["digest"] = np.array(digest)
    need = [r for r in reads if f"ctx:{r[0]}:{r[1]}" not in feats]
    need_ro = [r for r in reads if f"ro:{r[0]}:{r[1]}" not in feats] if args.response_only else []
    timing = {}
    if need or need_ro:
        model = load_frozen_backbone(folder, "cpu")
        for tag, todo, prompts in (("ctx", need, [p for p, _ in keys]), ("ro", need_ro, [""] * len(keys))):
            if not todo:
                continue
            wall, cpu = time.perf_counter(), _cpu()
            sets = response_feature_sets(model, tokenizer, prompts, [r for _, r in keys], args.max_length, todo)
            timing[tag] = {"wall_min": round((time.perf_counter() - wall) / 60, 2),
                           "cpu_min": round((_cpu() - cpu) / 60, 2), "sequences": len(keys)}
            print(f"features {tag}: {timing[tag]}", flush=True)
            feats.update({f"{tag}:{layer}:{pool}": x for (layer, pool), x in sets.items()})
        np.savez(cache, **feats)
    if args.minilm and "mini:ctx" not in feats:
        from reward.backbone import builtin_folder

        mini_folder = str(builtin_folder("all-minilm-l6-v2"))
        mini_tok = AutoTokenizer.from_pretrained(mini_folder)
        mini = load_frozen_backbone(mini_folder, "cpu")
        wall = time.perf_counter()
        for tag, prompts in (("ctx", [p for p, _ in keys]), ("ro", [""] * len(keys))):
            sets = response_feature_sets(mini, mini_tok, prompts, [r for _, r in keys], 256, [(-1, "mean")])
            feats[f"mini:{tag}"] = sets[(-1, "mean")]
        timing["minilm"] = {"wall_min": round((time.perf_counter() - wall) / 60, 2), "sequences": len(keys)}
        print(f"features minilm: {timing['minilm']}", flush=True)
        np.savez(cache, **feats)
    n_tokens = np.array([min(len(tokenizer(" " + r.strip(), add_special_tokens=False)["input_ids"]),
                             args.max_length // 2) or 1 for _, r in keys], dtype=np.float64)
    feats["loglen"] = np.log(n_tokens)[:, None]

    def cols(*names: str) -> np.ndarray:
        return np.concatenate([feats[n] for n in names], axis=1)

    mid = 15  # SmolLM2-135M: 30 layers, probe_layer 0 reads hidden_states[15]
    variants = {
        "default: L15 mean": lambda: cols(f"ctx:{mid}:mean"),
        "L15 mean + loglen": lambda: cols(f"ctx:{mid}:mean", "loglen"),
        "L15 mean+last": lambda: cols(f"ctx:{mid}:mean", f"ctx:{mid}:last"),
        "L8+15+22 mean": lambda: cols("ctx:8:mean", f"ctx:{mid}:mean", "ctx:22:mean"),
        "L8+15+22 mean + loglen": lambda: cols("ctx:8:mean", f"ctx:{mid}:mean", "ctx:22:mean", "loglen"),
        "L8+15+22 mean+last": lambda: cols(*(f"ctx:{la}:{p}" for la in (8, mid, 22) for p in POOL_SETS)),
        "L4..22 mean (6 layers)": lambda: cols(*(f"ctx:{la}:mean" for la in (4, 8, 11, mid, 19, 22))),
        "L11+15+19 mean": lambda: cols("ctx:11:mean", f"ctx:{mid}:mean", "ctx:19:mean"),
        "L15 mean, wide penalties": lambda: cols(f"ctx:{mid}:mean"),
        "L8+15+22 mean, wide penalties": lambda: cols("ctx:8:mean", f"ctx:{mid}:mean", "ctx:22:mean"),
    }
    for name in ("L15 mean", "L11+15+19 mean"):
        variants[f"{name}, prompt-CV"] = variants["default: L15 mean" if name == "L15 mean" else name]
    if -1 in args.layers:
        variants["L15+last-layer mean"] = lambda: cols(f"ctx:{mid}:mean", "ctx:-1:mean")
    if args.minilm:
        variants["MiniLM mean, response only"] = lambda: cols("mini:ro")
        variants["MiniLM mean, with prompt"] = lambda: cols("mini:ctx")
        variants["L11+15+19 mean + MiniLM"] = lambda: cols("ctx:11:mean", f"ctx:{mid}:mean", "ctx:19:mean", "mini:ro")
        variants["L11+15+19 mean + MiniLM, prompt-CV"] = variants["L11+15+19 mean + MiniLM"]
        variants["L15 mean + MiniLM"] = lambda: cols(f"ctx:{mid}:mean", "mini:ro")
    if args.mlp:
        variants["L11+15+19 mean, MLP head, prompt-CV"] = variants["L11+15+19 mean"]
    if args.response_only:
        variants["L15 mean, response only"] = lambda: cols(f"ro:{mid}:mean")
        variants["L15 mean, with and without prompt"] = lambda: cols(f"ctx:{mid}:mean", f"ro:{mid}:mean")
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants}
    penalties = [0.1, 0.3, 1.0, 3.0, 10.0]
    wide = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]

    def index(side: list[tuple[str, str]]) -> np.ndarray:
        return np.array([items[k] for k in side])

    def accuracy(probe, x, chosen, rejected) -> float:
        good, bad = np.array(probe.rewards(x[index(chosen)])), np.array(probe.rewards(x[index(rejected)]))
        return float((good > bad).mean())

    results = []
    print(f"| {args.data} variant | dims | held-out per seed | held mean | test per seed | test mean | penalties |")
    print("|---|---|---|---|---|---|---|")
    for name, build in variants.items():
        try:
            x = build()
        except KeyError as missing:  # a layer not in --layers
            print(f"| {name} | skipped: no features {missing} |", flush=True)
            continue
        held, tested, chosen_penalties = [], [], []
        started = time.perf_counter()
        for seed in args.seeds:
            (tr_c, tr_r), (he_c, he_r) = sides[seed]
            by_prompt = "prompt-CV" in name  # folds of whole prompts (debates), wide penalty grid
            if "MLP" in name:
                head = fit_mlp_head(x[index(tr_c)], x[index(tr_r)], [p for p, _ in tr_c], seed)
                held.append(accuracy(head, x, he_c, he_r))
                tested.append(accuracy(head, x, *test_sides))
                chosen_penalties.append(head.choice)
                continue
            probe = fit_probe(x[index(tr_c)], x[index(tr_r)], wide if "wide" in name or by_prompt else penalties, 5,
                              seed, 0, args.max_length, groups=[p for p, _ in tr_c] if by_prompt else None)
            held.append(accuracy(probe, x, he_c, he_r))
            tested.append(accuracy(probe, x, *test_sides))
            chosen_penalties.append(probe.penalty)
        row = {"data": args.data, "variant": name, "dims": x.shape[1], "held": held, "held_mean": np.mean(held),
               "test": tested, "test_mean": np.mean(tested), "penalties": chosen_penalties,
               "fit_s": round(time.perf_counter() - started, 1)}
        results.append(row)
        print(f"| {name} | {x.shape[1]} | {', '.join(f'{h:.3f}' for h in held)} | {np.mean(held):.3f} | "
              f"{', '.join(f'{t:.3f}' for t in tested)} | {np.mean(tested):.3f} | {chosen_penalties} |", flush=True)
    best = max(results, key=lambda r: r["held_mean"])
    print(f"selected by the train split's held-out mean: {best['variant']} ({best['held_mean']:.3f})")
    print(json.dumps({"timing": timing, "held_out_pairs": {s: len(f[1]) for s, f in frames.items()},
                      "train_pairs": {s: len(f[0]) for s, f in frames.items()}, "test_pairs": len(test),
                      "results": results}, default=float))


if __name__ == "__main__":
    main()
