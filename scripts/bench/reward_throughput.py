"""Pairs/s and peak memory of `rankloop train reward` against a plain TRL RewardTrainer script with TRL's defaults.

Same model, same data (the first --pairs pairs of the HH train file, tokenized once the same way), same machine,
same run: each variant runs in its own subprocess (so peak memory is its own), one after the other, and the
ratio is printed. Only optimizer steps are timed (evaluation and checkpoint saving are left out), and the first
step is a warm-up that is not counted.

TRL's defaults on a CPU include bf16=True, which is emulated there (about 20x slower per step), so the TRL run
is bounded by --trl-steps (default 3: two timed steps). Say so when quoting the figure.

    python scripts/bench/reward_throughput.py                       # all-MiniLM-L6-v2, CPU or GPU
    python scripts/bench/reward_throughput.py --base smollm2-135m-instruct --steps 6 --trl-steps 3
    python scripts/bench/reward_throughput.py --trl-steps 6 --set bf16=true   # ours with bf16 on the CPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trainer_harness import child, compare, hh_pairs, hh_workspace, step_timer  # noqa: E402 (this folder)


def run_rankloop(args: argparse.Namespace) -> dict:
    """`rankloop train reward` as the CLI runs it: a workspace, its pairs, train_reward_model, our defaults."""
    from reward.config import RewardTrainingConfig, parse_assignment
    from reward.train import train_reward_model
    from store.runs import get_run

    ws = hh_workspace(args.pairs, "bench-reward-")
    overrides = dict(parse_assignment(a) for a in args.assignments)
    config = RewardTrainingConfig(base=args.base, max_steps=args.steps, eval_steps=10**6, eval_fraction=0.01,
                                  max_length=args.max_length, report_to=[], early_stopping_patience=0,
                                  per_device_train_batch_size=args.batch_size, **({"method": args.method}
                                                                                  if args.method else {}),
                                  **overrides)
    timer = step_timer()
    result = train_reward_model(ws, config, progress=False, callbacks=[timer])
    chosen = get_run(ws.db, result.run_id).metrics  # what the per-device defaults picked
    settings = {"bf16": chosen["device"]["bf16"], "gradient_checkpointing": chosen["device"]["gradient_checkpointing"],
                "method": chosen["method"], "group_by_length": config.group_by_length}
    return {"durations": timer.durations, "settings": settings}


def run_trl(args: argparse.Namespace) -> dict:
    """A plain TRL script: RewardTrainer + RewardConfig with TRL's defaults; pre-tokenized ids (the MiniLM
    tokenizer has no EOS token, which TRL's raw-text path needs) and the same LoRA setup when ours uses LoRA."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from reward.backbone import load_backbone, lora_config, resolve_method, uses_eos
    from reward.config import RewardTrainingConfig
    from reward.data import to_dataset
    from training.models import count_parameters

    ours = RewardTrainingConfig(base=args.base, **({"method": args.method} if args.method else {}))
    model, tokenizer, heads = load_backbone(args.base)
    data = to_dataset(hh_pairs(args.pairs), tokenizer, args.max_length, uses_eos(tokenizer))
    data = Dataset.from_dict({"chosen_ids": data["chosen_ids"], "rejected_ids": data["rejected_ids"]})
    method, _ = resolve_method(ours.method, count_parameters(model)[0])  # as `train reward` resolves it
    peft = lora_config(heads, ours.lora_r, ours.lora_alpha, ours.lora_target_modules) if method == "lora" else None
    import torch

    # TRL's defaults, plus the one flag a CPU needs to start at all (use_cpu; it leaves bf16 on, emulated).
    trl_args = RewardConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), max_steps=args.trl_steps,
                            per_device_train_batch_size=args.batch_size, save_strategy="no", report_to="none",
                            disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    timer = step_timer()
    trainer = RewardTrainer(model=model, args=trl_args, train_dataset=data, processing_class=tokenizer,
                            peft_config=peft, callbacks=[timer])
    trainer.train()
    return {"durations": timer.durations, "settings": {"bf16": trl_args.bf16,
                                                       "gradient_checkpointing": trl_args.gradient_checkpointing,
                                                       "method": method}}


def resolve_base_offline(base: str) -> str:
    from reward.backbone import builtin_folder

    folder = builtin_folder(base)
    if folder is not None:
        return str(folder)
    if base == "smollm2-135m-instruct":
        from rankloop.models import prepare_default_policy

        return str(prepare_default_policy())
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="all-minilm-l6-v2", help="Backbone (a TRL RewardTrainer comparison: the "
                        "default method 'probe' trains no steps, so the bench fine-tunes).")
    parser.add_argument("--method", choices=["auto", "lora", "full"], default="auto",
                        help="Fine-tuning method: 'auto' is full below 100M parameters, LoRA above.")
    parser.add_argument("--pairs", type=int, default=64, help="Pairs taken from the HH train file.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps of the rankloop run.")
    parser.add_argument("--trl-steps", type=int, default=3, help="Optimizer steps of the TRL-defaults run.")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
                        help="A [reward] field for the rankloop run, e.g. --set bf16=true (repeatable).")
    parser.add_argument("--variant", choices=["rankloop", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        if args.variant == "rankloop":  # as the `rankloop` command does before torch loads (training/device.py)
            from training.device import prefer_huge_pages

            prefer_huge_pages()
        args.base = resolve_base_offline(args.base)  # a folder, the same for both variants
        child(args, run_rankloop if args.variant == "rankloop" else run_trl)
        return
    compare(__file__, args, {"rankloop": "rankloop train reward", "trl": "TRL defaults"},
            f"backbone {args.base}, {args.pairs} HH pairs, batch {args.batch_size}, max_length {args.max_length}")


if __name__ == "__main__":
    main()
