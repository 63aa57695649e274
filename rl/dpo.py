"""DPO on the workspace's preference pairs with TRL's `DPOTrainer`.

`train_dpo(ws, config)`:
  1. take the pairs snapshot (split by prompt, as the reward model's), record it on a new run row and save its rows
     in the run folder (training/snapshot.py; `--resume` trains on those rows);
  2. load the starting policy (a LoRA policy merged), wrap it in LoRA: with `ref_model=None` TRL uses the same
     model with the adapters disabled as the reference, so no second copy of the weights is held;
  3. train with per-device defaults (training/device.py), TensorBoard logs, checkpoints every `save_steps`,
     early stopping on held-out preference accuracy (`eval_rewards/accuracies`);
  4. save the merged policy, add its model row (parent = the starting policy, round, run, metrics), close the run.

A reviewer-preferred response is "chosen"; pairs are conversational (the prompt's chat messages), so the policy's
chat template formats them exactly as sampling does.

Replay (`replay` > 0, with `rounds` selected): pairs of earlier rounds (below the lowest selected round, the other
filters alike) are added to the training part so that they make up `replay` of it, a seeded subset when there are
more; the snapshot records them (`replay`: share asked, rows added, rounds they came from) and the saved rows hold
them, so `--resume` trains on the same rows. Against forgetting the loop measures (rl/forgetting.py); `sft_replay`
is the other lever (an NLL term on the chosen responses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl.config import DPOTrainingConfig
from rl.training import (
    PolicyTrainingResult,
    StartPolicy,
    finish_trainer,
    load_for_training,
    lora_config,
    train_policy,
    trainer_kwargs,
)
from store.workspace import WorkspaceLike
from training.checks import resume_checkpoint
from training.hf import fit, history_callback, step_metrics, trainer_callbacks
from training.snapshot import parts

RUN_KIND = "dpo"
LOGGED = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
          "logps/rejected")


def pairs_dataset(pairs: Any) -> Any:
    """Conversational preference rows (`store.rows.trl_rows`, as `rankloop export pairs --style conversational`)."""
    from datasets import Dataset

    from store.rows import trl_rows

    return Dataset.from_list(trl_rows("pairs", pairs, "conversational"))


def length_order(pairs: Any, batch_size: int, seed: int) -> Any:
    """The training pairs in the order TRL reads them (`train_sampling_strategy="sequential"`) when
    `group_by_length`: cut into batches of similar length, the batches in a seeded random order, the widest first
    (a run that runs out of memory does so at its first step). Deterministic, so a resume reads the same batches.

    TRL pads a batch to its longest sequence (its padding-free DPO is disabled in TRL 1.16), and a pair's shorter
    answer is padded to the longer one's length anyway; batching by length removes the rest of the padding.
    transformers' own `group_by_length` sampler sorts within megabatches of at least a quarter of the data, so on
    small sets (under 32 batches) it groups little or nothing. The length is the characters of the prompt and of the
    longer answer (its correlation with the tokenized width was 0.99 on 64 HH pairs)."""
    import random

    from store.rows import trl_rows

    def chars(messages: Any) -> int:
        return sum(len(str(m.get("content", ""))) for m in messages)

    rows = trl_rows("pairs", pairs, "conversational")
    width = [chars(r["prompt"]) + max(chars(r["chosen"]), chars(r["rejected"])) for r in rows]
    rng = random.Random(f"{seed}:length_order")
    order = list(range(len(rows)))
    rng.shuffle(order)  # ties in random order
    order.sort(key=lambda i: -width[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rest = batches[1:]
    rng.shuffle(rest)
    return pairs.iloc[[i for batch in batches[:1] + rest for i in batch]].reset_index(drop=True)


def dpo_args(config: DPOTrainingConfig, run_dir: Path, dev: Any, has_eval: bool, progress: bool) -> Any:
    from trl import DPOConfig

    losses, weights = list(config.loss_type), list(config.loss_weights) or [1.0] * len(config.loss_type)
    if config.sft_replay > 0:  # RPO-style: an NLL term on the chosen responses limits forgetting
        losses, weights = [*losses, "sft"], [*weights, config.sft_replay]
    stop_early = has_eval and config.early_stopping_patience > 0
    return DPOConfig(
        **trainer_kwargs(config, run_dir, dev, has_eval, progress), beta=config.beta, loss_type=losses,
        loss_weights=weights if len(losses) > 1 else None, label_smoothing=config.label_smoothing,
        precompute_ref_log_probs=config.effective_precompute, metric_for_best_model="eval_rewards/accuracies"
        if stop_early else None, greater_is_better=True, load_best_model_at_end=False,
        train_sampling_strategy="sequential" if config.group_by_length else "random",  # `length_order`
    )


def train_dpo(ws: WorkspaceLike, config: DPOTrainingConfig, *, resume_from: int | None = None, progress: bool = True,
              callbacks: list[Any] | None = None) -> PolicyTrainingResult:
    """Train, save and register a DPO policy; the run row records config, snapshot, metrics and status.

    Earlier rounds' pairs are replayed into a new snapshot (`config.replay`); a resumed run trains on its saved
    rows, replay included."""
    def replay(rows: Any, snapshot: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if resume_from is None and config.replay > 0:
            return with_replay(ws.db, config, rows, snapshot)
        return rows, snapshot

    return train_policy(ws, RUN_KIND, "pairs", config, _train, resume_from, progress, callbacks, replay)


def with_replay(db: Any, config: DPOTrainingConfig, rows: Any, snapshot: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`rows` with earlier rounds' pairs added to the training part (column `replay` marks them) so that they are
    `config.replay` of it, and the snapshot record updated to describe the combined rows."""
    import hashlib
    import math
    from dataclasses import replace

    import pandas as pd

    from training.snapshot import digest, take_snapshot

    selected = sorted(int(r) for r in config.rounds)
    record: dict[str, Any] = {"share": config.replay, "rows": 0, "rounds": []}
    rows = rows.assign(replay=False)
    if not selected:
        record["note"] = "every round is selected: no earlier round to replay"
        return rows, {**snapshot, "replay": record}
    everything, _ = take_snapshot(db, replace(config, rounds=[], max_pairs=0))
    earlier = everything[everything["round"].notna() & (everything["round"] < selected[0])]
    n_train = int((rows["part"] == "train").sum())
    want = math.ceil(config.replay / (1 - config.replay) * n_train - 1e-9)
    if earlier.empty or want == 0:
        record["note"] = f"no pairs in rounds below {selected[0]}" if earlier.empty else "no training rows"
        return rows, {**snapshot, "replay": record}
    order = [hashlib.sha256(f"{config.seed}:replay:{j}:{c}:{a}:{b}".encode()).hexdigest()
             for j, c, a, b in earlier[["judgment_id", "comparison_id", "chosen_id", "rejected_id"]]
             .itertuples(index=False)] if "judgment_id" in earlier else \
        [hashlib.sha256(f"{config.seed}:replay:{i}".encode()).hexdigest() for i in range(len(earlier))]
    picked = earlier.assign(_order=order).sort_values("_order").head(want).drop(columns="_order")
    picked = picked.assign(part="train", replay=True)
    combined = pd.concat([rows, picked], ignore_index=True)
    record.update({"rows": len(picked), "available": len(earlier), "rounds": sorted(int(r) for r in
                                                                                    picked["round"].unique()),
                   "train_share": round(len(picked) / (n_train + len(picked)), 4)})
    train = combined[combined["part"] == "train"]
    return combined, {**snapshot, "replay": record, "pairs": len(combined), "train_pairs": len(train),
                      "train_prompts": int(train["prompt_key"].nunique()),
                      "rounds": sorted({int(r) for r in combined["round"].dropna()}),
                      "sha256": digest(combined, "pairs")}


def _train(ws: WorkspaceLike, config: DPOTrainingConfig, pairs: Any, start: StartPolicy, run_id: int, run_dir: Path,
           resume_from: int | None, progress: bool, callbacks: list[Any] | None,
           quantization: Any = None, state: Any = None) -> PolicyTrainingResult | None:
    from trl import DPOTrainer

    train_pairs, eval_pairs = parts(pairs)
    model, tokenizer, dev = load_for_training(start, config, quantization)
    if config.group_by_length:
        train_pairs = length_order(train_pairs, config.per_device_train_batch_size, config.seed)
    eval_set = pairs_dataset(eval_pairs) if len(eval_pairs) else None
    args = dpo_args(config, run_dir, dev, eval_set is not None, progress)
    history = history_callback()
    extra = trainer_callbacks(history, config.early_stopping_patience, eval_set is not None, callbacks)
    trainer, output, seconds = fit(
        ws.db, run_id, run_dir, dev, lambda: DPOTrainer(
            model=model, ref_model=None, args=args, train_dataset=pairs_dataset(train_pairs), eval_dataset=eval_set,
            processing_class=tokenizer, peft_config=lora_config(config) if config.lora else None, callbacks=extra),
        resume_checkpoint(run_dir, resume_from), {"precompute_ref_log_probs": args.precompute_ref_log_probs},
        write=state is None or state.is_main_process)
    steps_run = trainer.state.global_step - history.first_step
    train_logs = [row for row in history.logs if "rewards/margins" in row]
    eval_logs = [row for row in history.logs if "eval_rewards/accuracies" in row]
    metrics: dict[str, Any] = {
        **step_metrics(trainer, output, seconds), "train_pairs": len(train_pairs),
        "pairs_per_s": round(steps_run * config.per_device_train_batch_size * config.gradient_accumulation_steps
                             * args.world_size / max(seconds, 1e-9), 3),
        "device": dev.as_dict(),
        "first": {k: train_logs[0][k] for k in LOGGED if k in train_logs[0]} if train_logs else {},
        "last": {k: train_logs[-1][k] for k in LOGGED if k in train_logs[-1]} if train_logs else {},
    }
    if eval_logs:
        metrics["eval_accuracy"] = eval_logs[-1]["eval_rewards/accuracies"]
        metrics["eval_margin"] = eval_logs[-1].get("eval_rewards/margins")
        metrics["eval_pairs"] = len(eval_pairs)
    rounds = sorted({int(r) for r in pairs["round"].dropna()}) if "round" in pairs else []
    keep = {k: v for k, v in metrics.items() if k not in ("first", "last", "device")}
    return finish_trainer(ws, trainer, tokenizer, start, run_id, run_dir,
                         config.name or f"dpo-run{run_id}", rounds, metrics, {**keep, "trainer": "dpo"}, state)
