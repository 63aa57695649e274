"""Pairs/s and peak memory of `rankloop train dpo` against a plain TRL DPOTrainer script with TRL's defaults.

Same policy, same data (the first --pairs pairs of the HH train file as conversational rows), same machine, same
run: each variant runs in its own subprocess (so peak memory is its own), one after the other, and the ratio is
printed. Only optimizer steps are timed (evaluation and saving left out).

The rankloop side is `train_dpo` on a workspace holding those pairs (LoRA, reference = adapters off, per-device
defaults: float32 on a CPU, gradient checkpointing when a batch's activations would take over an eighth of the
machine's memory, pairs batched by length, TRL's fused LM head scoring labelled positions only in small tiles on a
CPU; see rl/dpo.py, training/device.py, training/hf.py). The TRL side is `DPOTrainer(model, args=DPOConfig(output_dir,
max_steps, batch size))` with the same LoRA config (TRL's other defaults: bf16=True, which a CPU without AVX-512-BF16
emulates (a 576x1536 linear layer ran 3.7x slower under bf16 autocast than in float32 on this 2-core Xeon), and
gradient checkpointing on; on a CPU `use_cpu=True` is added, without which TRL refuses to start), so it is bounded by
--trl-steps. Say so when quoting the figure.

What differs between the two, and which way it leans:
- batches: ours are the widest batch first then the others in seeded random order (`length_order`), and the first
  is timed too (no warm-up left out: it would leave out our slowest step); TRL's are random, its first step is a
  warm-up. Ours is timed over a whole pass (8 steps = the 63 training pairs), TRL's over --trl-steps - 1 random ones.
- peak memory: ours always includes the widest batch (16 sequences of up to 493 tokens in the default data); TRL's
  is the peak of the --trl-steps batches it drew, which may miss the widest. Both lean against rankloop.
- the reference log-probs: both compute them in each step (ours precomputes only when an epoch is seen twice).

The rankloop side runs as the `rankloop` command does: torch's huge-page CPU allocator on (THP_MEM_ALLOC_ENABLE=1,
training/device.py `prefer_huge_pages`); the TRL side keeps the environment it is given (`THP_MEM_ALLOC_ENABLE=1
python scripts/bench/dpo_throughput.py` gives it the same allocator). Both sides print the variable's value.

Measured (2026-12-01, the 2-core Xeon with AVX-512 but no AVX-512-BF16, 24 GB, quiet), default arguments:
  05:36-05:47 UTC, `python scripts/bench/dpo_throughput.py`:
    rankloop train dpo  0.305 pairs/s over 8 timed steps, peak 2483 MiB (float32, checkpointing on, by length)
    TRL defaults        0.071 pairs/s over 2 timed steps, peak 7273 MiB (bf16 autocast, checkpointing on)
    ratio: 4.29x pairs/s, 0.34x peak memory
  05:48-05:59 UTC, `THP_MEM_ALLOC_ENABLE=1 python scripts/bench/dpo_throughput.py` (a short test run beside it):
    rankloop 0.323 pairs/s, peak 2446 MiB; TRL defaults 0.069 pairs/s, peak 6244 MiB: 4.71x, 0.39x
Earlier the same day, before the allocator change and with another session's loop beside it, the rankloop side
peaked at 6814 MiB (0.97x): glibc's heap, not live tensors (docs/experiments.md, "Where the memory went").

    python scripts/bench/dpo_throughput.py                         # default policy, CPU or GPU
    python scripts/bench/dpo_throughput.py --policy /path/to/model --pairs 64 --steps 6 --trl-steps 3
    python scripts/bench/dpo_throughput.py --set gradient_checkpointing=false      # ours without checkpointing
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trainer_harness import child, compare, hh_pairs, hh_workspace, resolve_policy_offline, step_timer  # noqa: E402 (this folder)


def run_rankloop(args: argparse.Namespace) -> dict:
    """`rankloop train dpo` as the CLI runs it: a workspace with the pairs, `train_dpo`, our defaults."""
    from reward.config import parse_assignment
    from rl.config import DPOTrainingConfig
    from rl.dpo import train_dpo

    ws = hh_workspace(args.pairs, "bench-dpo-")
    overrides = dict(parse_assignment(a) for a in args.assignments)
    config = DPOTrainingConfig(policy=args.policy, max_steps=args.steps, eval_steps=10**6, save_steps=10**6,
                               eval_fraction=0.01, max_length=args.max_length, report_to=[],
                               early_stopping_patience=0, per_device_train_batch_size=args.batch_size, **overrides)
    timer = step_timer()
    result = train_dpo(ws, config, progress=False, callbacks=[timer])
    dev = result.metrics["device"]
    # with group_by_length the first batch is the widest (rl.dpo.length_order): count it rather than call it a
    # warm-up, so the figure is not flattered by leaving out the slowest step
    warmup = 0 if config.group_by_length else 1
    n = result.metrics["train_pairs"]  # a pass's last batch is short: whole passes count their pairs
    passes, steps_left = divmod(args.steps, -(-n // args.batch_size))
    trained = passes * n + steps_left * args.batch_size
    return {"durations": timer.durations, "warmup_steps": warmup, "examples_timed": trained - warmup * args.batch_size,
            "settings": {
        "lora": config.lora, **{k: dev.get(k) for k in ("bf16", "gradient_checkpointing")},
        "group_by_length": config.group_by_length, "precompute_ref_log_probs": config.effective_precompute,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"), **overrides}}


def run_trl(args: argparse.Namespace) -> dict:
    """A plain TRL script: DPOTrainer + DPOConfig with TRL's defaults and the same LoRA config."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from rl.config import DPOTrainingConfig
    from rl.dpo import pairs_dataset
    from rl.training import lora_config

    model = AutoModelForCausalLM.from_pretrained(args.policy)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    data = Dataset.from_list(list(pairs_dataset(hh_pairs(args.pairs))))
    trl_args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=args.trl_steps,
                         per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                         save_strategy="no", report_to="none", disable_tqdm=True,
                         use_cpu=not torch.cuda.is_available())  # the one change a CPU needs to start at all
    timer = step_timer()
    trainer = DPOTrainer(model=model, args=trl_args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(DPOTrainingConfig()), callbacks=[timer])
    trainer.train()
    return {"durations": timer.durations, "settings": {"lora": True, "bf16": trl_args.bf16,
                                                       "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                                                       "gradient_checkpointing": getattr(
                                                           trl_args, "activation_checkpointing", None)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="Policy folder or the default policy.")
    parser.add_argument("--pairs", type=int, default=64, help="Pairs taken from the HH train file.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8, help=(
        "Optimizer steps of the rankloop run (8: one pass over the 63 training pairs of the default 64 at batch 8)."))
    parser.add_argument("--trl-steps", type=int, default=3, help="Optimizer steps of the TRL-defaults run.")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
                        help="A [dpo] field for the rankloop run, e.g. --set gradient_checkpointing=false "
                             "(repeatable).")
    parser.add_argument("--variant", choices=["rankloop", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        if args.variant == "rankloop":  # as the `rankloop` command does before torch loads (training/device.py)
            from training.device import prefer_huge_pages

            prefer_huge_pages()
        args.policy = resolve_policy_offline(args.policy)
        child(args, run_rankloop if args.variant == "rankloop" else run_trl)
        return
    compare(__file__, args, {"rankloop": "rankloop train dpo", "trl": "TRL defaults"},
            f"policy {args.policy}, {args.pairs} HH pairs, batch {args.batch_size}, max_length {args.max_length}")


if __name__ == "__main__":
    main()
