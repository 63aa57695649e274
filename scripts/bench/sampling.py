"""Benchmark: tokens/s of `generate_candidates` (length-sorted batches, k samples per prompt, KV cache) against a
naive loop (one prompt, one sequence per `generate` call) on the same prompts, model and max_new_tokens.
Both are timed after a short warm-up generate, so neither pays the process's first-call costs.

    .venv/bin/python scripts/bench/sampling.py                 # the default policy (SmolLM2-135M-Instruct)
    .venv/bin/python scripts/bench/sampling.py --model tiny    # a 2-layer test model, a few seconds

Tokens are the useful ones: each response's tokens up to and with its EOS (padding after it is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rankloop.workspace import init_workspace  # noqa: E402
from rl.device import pick_device  # noqa: E402
from rl.sampling import (  # noqa: E402
    SamplingParams,
    eos_ids,
    generate_candidates,
    load_policy,
    prompt_ids,
    sample_completions,
    split_completion,
)
from store.batch import Batch, Prompt, write_batch  # noqa: E402
from store.db import write  # noqa: E402
from store.models import add_model, get_model  # noqa: E402

DEMO_PROMPTS = ROOT / "rankloop" / "data" / "demo_prompts.jsonl"


def model_folder(which: str, scratch: Path) -> Path:
    if which == "tiny":
        from tests.tiny import build_causal_lm

        return build_causal_lm(scratch / "tiny")
    from rankloop.models import prepare_default_policy

    started = time.monotonic()
    folder = prepare_default_policy()
    print(f"default policy folder: {folder} (ready in {time.monotonic() - started:.1f}s)")
    return folder


def naive_loop(model, tokenizer, device: str, conversations: list, params: SamplingParams) -> tuple[int, float]:
    """One prompt, one sequence per `generate` call: (new tokens, seconds)."""
    import torch

    stop = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    tokens, started = 0, time.monotonic()
    for i, conv in enumerate(conversations):
        ids = torch.tensor([prompt_ids(tokenizer, conv)], device=device)  # (1, L)
        for j in range(params.k):
            torch.manual_seed(params.seed + i * params.k + j)
            with torch.inference_mode():
                seq = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                    temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                    max_new_tokens=params.max_new_tokens, use_cache=True, pad_token_id=pad_id, eos_token_id=stop,
                )  # (1, L + T)
            tokens += split_completion(seq[0, ids.shape[1]:].tolist(), set(stop))[1]
    return tokens, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "default"], default="default")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, one per core); 1 avoids oversubscription "
                         "when another torch process shares the cores.")
    ap.add_argument("--repeats", type=int, default=1, help="Measure both paths this many times (noisy hosts).")
    ap.add_argument("--json", action="store_true", help="Also print the figures as one JSON line.")
    args = ap.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = SamplingParams(k=args.k, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0)
    records = [json.loads(line) for line in DEMO_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    conversations = [[{"role": "user", "content": r["prompt"]}] for r in records[: args.prompts]]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = model_folder(args.model, Path(scratch))
        choice = pick_device(args.device)
        model, tokenizer = load_policy(str(folder), choice.device, choice.dtype)  # the naive loop's copy
        sample_completions(model, tokenizer, conversations[:1], SamplingParams(k=2, max_new_tokens=4, batch_size=2),
                           choice.device)  # warm the process up (thread pools, allocator) before timing anything
        for rep in range(args.repeats):
            ws = init_workspace(Path(scratch) / f"ws{rep}")
            batch = Batch(prompts=[Prompt(i, conv) for i, conv in enumerate(conversations)])
            write(ws.db, lambda con, batch=batch: write_batch(con, batch))
            add_model(ws.db, "bench", "policy", path=str(folder))
            result = generate_candidates(ws.db, get_model(ws.db, "bench"), n_prompts=len(conversations),
                                         params=params, device=args.device)
            naive_tokens, naive_s = naive_loop(model, tokenizer, choice.device, conversations, params)
            runs.append((result, naive_tokens, naive_s))

    print(f"model {args.model} on {choice.name}: {len(conversations)} prompts x k={params.k}, "
          f"max_new_tokens={params.max_new_tokens}, batch_size={params.batch_size} "
          f"({params.prompts_per_batch} prompts per batch)")
    for result, naive_tokens, naive_s in runs:
        naive_rate = naive_tokens / naive_s
        print(f"batched generate_candidates: {result.new_tokens:6d} tokens in {result.generate_s:6.1f}s = "
              f"{result.tokens_per_s:8.1f} tokens/s ({result.finished}/{result.responses} ended with EOS)")
        print(f"naive one-at-a-time loop:    {naive_tokens:6d} tokens in {naive_s:6.1f}s = "
              f"{naive_rate:8.1f} tokens/s")
        print(f"speed-up: {result.tokens_per_s / naive_rate:.2f}x")
        if args.json:
            print(json.dumps({
                "model": args.model, "device": choice.name, "batched_tokens": result.new_tokens,
                "batched_s": round(result.generate_s, 2), "batched_tps": round(result.tokens_per_s, 1),
                "naive_tokens": naive_tokens, "naive_s": round(naive_s, 2), "naive_tps": round(naive_rate, 1),
                "speedup": round(result.tokens_per_s / naive_rate, 2),
            }))

if __name__ == "__main__":
    main()
