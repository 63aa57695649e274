"""Pairs/s and peak memory of `rankloop train dpo` against a plain TRL DPOTrainer script with TRL's defaults.

Same policy, same data (the first --pairs pairs of the HH train file as conversational rows), same machine, same
run: each variant runs in its own subprocess (so peak memory is its own), one after the other, and the ratio is
printed. Only optimizer steps are timed (evaluation and saving left out); the first step is a warm-up.

The rankloop side is `train_dpo` on a workspace holding those pairs (LoRA, reference = adapters off, per-device
defaults). The TRL side is `DPOTrainer(model, args=DPOConfig(output_dir, max_steps, batch size))` with the same
LoRA config (TRL's other defaults: bf16=True, which a CPU emulates very slowly, and gradient checkpointing on;
on a CPU `use_cpu=True` is added, without which TRL refuses to start), so it is bounded by --trl-steps. Say so
when quoting the figure.

    python scripts/bench/dpo_throughput.py                         # default policy, CPU or GPU
    python scripts/bench/dpo_throughput.py --policy /path/to/model --pairs 64 --steps 6 --trl-steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "scripts" / "data" / "hh_rlhf_harmless_base.derived_from_test.train.jsonl.gz"


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self.started)

    return StepTimer()


def _pairs(n: int):
    from reward.data import read_pairs_file

    return read_pairs_file(DATA).head(n).reset_index(drop=True)


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_rankloop(args: argparse.Namespace) -> dict:
    """`rankloop train dpo` as the CLI runs it: a workspace with the pairs, `train_dpo`, our defaults."""
    from rankloop.workspace import init_workspace
    from rl.config import DPOTrainingConfig
    from rl.dpo import train_dpo
    from store.batch import Batch, Comparison, Judgment, Prompt, Response, write_batch
    from store.db import write

    ws = init_workspace(Path(tempfile.mkdtemp(prefix="bench-dpo-")) / "ws")
    batch = Batch()
    for i, row in _pairs(args.pairs).iterrows():
        batch.prompts.append(Prompt(i, [{"role": "user", "content": row.prompt_text}], text=row.prompt_text))
        batch.responses += [Response((i, "c"), i, row.chosen), Response((i, "r"), i, row.rejected)]
        batch.comparisons.append(Comparison(i, i, [(i, "c"), (i, "r")]))
        batch.judgments.append(Judgment(i, "hh", f"bench-{i}", ranking=[[(i, "c")], [(i, "r")]]))
    write(ws.db, lambda con: write_batch(con, batch))
    config = DPOTrainingConfig(policy=args.policy, max_steps=args.steps, eval_steps=10**6, save_steps=10**6,
                               eval_fraction=0.01, max_length=args.max_length, report_to=[],
                               early_stopping_patience=0, per_device_train_batch_size=args.batch_size)
    timer = _step_timer()
    result = train_dpo(ws, config, progress=False, callbacks=[timer])
    dev = result.metrics["device"]
    return {"durations": timer.durations, "settings": {"lora": config.lora, **{k: dev.get(k) for k in
                                                                              ("bf16", "gradient_checkpointing")}}}


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
    data = Dataset.from_list(list(pairs_dataset(_pairs(args.pairs))))
    trl_args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=args.trl_steps,
                         per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                         save_strategy="no", report_to="none", disable_tqdm=True,
                         use_cpu=not torch.cuda.is_available())  # the one change a CPU needs to start at all
    timer = _step_timer()
    trainer = DPOTrainer(model=model, args=trl_args, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(DPOTrainingConfig()), callbacks=[timer])
    trainer.train()
    return {"durations": timer.durations, "settings": {"lora": True, "bf16": trl_args.bf16,
                                                       "gradient_checkpointing": getattr(
                                                           trl_args, "activation_checkpointing", None)}}


def resolve_policy_offline(policy: str) -> str:
    if policy == "smollm2-135m-instruct":
        from rankloop.models import prepare_default_policy

        return str(prepare_default_policy())
    return policy


def child(args: argparse.Namespace) -> None:
    args.policy = resolve_policy_offline(args.policy)
    started = time.perf_counter()
    out = run_rankloop(args) if args.variant == "rankloop" else run_trl(args)
    timed = out["durations"][1:]  # the first step is a warm-up
    out.update({"variant": args.variant, "steps_timed": len(timed), "seconds_timed": sum(timed),
                "pairs_per_s": len(timed) * args.batch_size / sum(timed) if timed else None,
                "peak_memory_mb": round(_peak_memory_mb(), 1), "wall_s": round(time.perf_counter() - started, 1)})
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="Policy folder or the default policy.")
    parser.add_argument("--pairs", type=int, default=64, help="Pairs taken from the HH train file.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps of the rankloop run.")
    parser.add_argument("--trl-steps", type=int, default=3, help="Optimizer steps of the TRL-defaults run.")
    parser.add_argument("--variant", choices=["rankloop", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    results = {}
    for variant in ("rankloop", "trl"):
        cmd = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
    ours, trl = results["rankloop"], results["trl"]
    print(f"policy {args.policy}, {args.pairs} HH pairs, batch {args.batch_size}, max_length {args.max_length}")
    for name, r in (("rankloop train dpo", ours), ("TRL defaults", trl)):
        print(f"{name:20s} {r['pairs_per_s']:.3f} pairs/s over {r['steps_timed']} timed steps, "
              f"peak memory {r['peak_memory_mb']:.0f} MiB, settings {r['settings']}")
    print(f"ratio (rankloop / TRL defaults): {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x pairs/s, "
          f"{ours['peak_memory_mb'] / trl['peak_memory_mb']:.2f}x peak memory")
    print(json.dumps({"args": vars(args), "results": results}, default=str))


if __name__ == "__main__":
    main()
