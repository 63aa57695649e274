"""Benchmark: sequences/s of the reward probe's feature pass (`reward.probe.response_features`: length-sorted
batches, stopping at the probed layer) against the baseline it replaced, one full forward pass per sequence with
every hidden state returned, on the same HH pairs, backbone, layer and max_length, in the same process. Prints
the ratio and the largest difference between the two feature matrices (they must agree).

    .venv/bin/python scripts/bench/probe_features.py                  # SmolLM2-135M-Instruct, middle layer
    .venv/bin/python scripts/bench/probe_features.py --pairs 8 --batch-sizes 1 4

The backbone is the default policy folder (prepared on first use, as `scripts/demo` does); --base takes any
other local folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.trainer_harness import hh_pairs  # noqa: E402


def one_full_pass_each(model, tokenizer, prompts, responses, max_length, layer):
    """The baseline: what response_features did before batching (same sequences, same mean)."""
    import numpy as np
    import torch

    from reward.probe import _layer_index, _sequences

    out = np.zeros((len(prompts), model.config.hidden_size))
    for i, (ids, n_response) in enumerate(_sequences(tokenizer, prompts, responses, max_length)):
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        out[i] = states[_layer_index(len(states), layer)][0, -n_response:].mean(0).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32, help="HH train pairs (two sequences each)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--layer", type=int, default=0, help="probe_layer (0: the middle layer)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--base", help="a local model folder (default: the prepared default policy)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from rankloop.models import prepare_default_policy
    from reward.data import prompt_string
    from reward.probe import load_frozen_backbone, response_features

    base = args.base or str(prepare_default_policy())
    model, tokenizer = load_frozen_backbone(base, "cpu"), AutoTokenizer.from_pretrained(base)
    pairs = hh_pairs(args.pairs)
    prompts = [prompt_string(t, None, tokenizer) for t in pairs["prompt_text"]] * 2
    responses = list(pairs["chosen"]) + list(pairs["rejected"])
    print(f"{len(prompts)} sequences, max_length {args.max_length}, layer {args.layer}, {base}, "
          f"{torch.get_num_threads()} threads")
    response_features(model, tokenizer, prompts[:2], responses[:2], args.max_length, args.layer)  # warm-up

    started = time.perf_counter()
    reference = one_full_pass_each(model, tokenizer, prompts, responses, args.max_length, args.layer)
    baseline = len(prompts) / (time.perf_counter() - started)
    print(f"{'baseline: one full pass per sequence':40s} {baseline:7.2f} sequences/s")
    for size in args.batch_sizes:
        started = time.perf_counter()
        features = response_features(model, tokenizer, prompts, responses, args.max_length, args.layer,
                                     batch_size=size)
        rate = len(prompts) / (time.perf_counter() - started)
        print(f"{f'response_features, batch_size {size}':40s} {rate:7.2f} sequences/s  "
              f"ratio {rate / baseline:.2f}x  max |diff| {np.abs(features - reference).max():.1e}")


if __name__ == "__main__":
    main()
