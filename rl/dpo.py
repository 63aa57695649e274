"""DPO on the workspace's preference pairs with TRL's `DPOTrainer`.

`train_dpo(ws, config)`:
  1. read the pairs snapshot (split by prompt, as the reward model's), record it on a new run row;
  2. load the starting policy (a LoRA policy merged), wrap it in LoRA: with `ref_model=None` TRL uses the same
     model with the adapters disabled as the reference, so no second copy of the weights is held;
  3. train with per-device defaults (reward/device.py), TensorBoard logs, checkpoints every `save_steps`,
     early stopping on held-out preference accuracy (`eval_rewards/accuracies`);
  4. save the merged policy, add its model row (parent = the starting policy, round, run, metrics), close the run.

A reviewer-preferred response is "chosen"; pairs are conversational (the prompt's chat messages), so the policy's
chat template formats them exactly as sampling does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward.checks import finite_loss_callback
from reward.train import tensorboard_dir
from rl.config import DPOTrainingConfig
from rl.training import (
    StartPolicy,
    count_parameters,
    device_defaults,
    fail_run,
    last_checkpoint,
    load_causal_lm,
    lora_config,
    qlora,
    register_policy,
    resolve_policy,
    save_policy,
    start_policy_run,
    trainer_kwargs,
)

RUN_KIND = "dpo"
LOGGED = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
          "logps/rejected")


@dataclass
class PolicyTrainingResult:
    run_id: int
    model_name: str
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]


def prompt_messages(text: str | None, messages: Any) -> list[dict[str, str]]:
    """The prompt as chat messages (an imported plain-text prompt becomes one user turn)."""
    if messages is not None and len(messages):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    return [{"role": "user", "content": text or ""}]


def pairs_dataset(pairs: Any) -> Any:
    """Conversational preference rows: {"prompt": messages, "chosen": [assistant], "rejected": [assistant]}."""
    from datasets import Dataset

    rows = [{"prompt": prompt_messages(t, m), "chosen": [{"role": "assistant", "content": str(c)}],
             "rejected": [{"role": "assistant", "content": str(r)}]}
            for t, m, c, r in zip(pairs["prompt_text"], pairs["prompt_messages"], pairs["chosen"], pairs["rejected"],
                                  strict=True)]
    return Dataset.from_list(rows)


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
    )


class _History:
    @staticmethod
    def make() -> Any:
        from transformers import TrainerCallback

        class History(TrainerCallback):
            """Keeps the logged DPO metrics (loss, margins, accuracies) and the step training (re)started from."""

            def __init__(self) -> None:
                self.logs: list[dict[str, float]] = []
                self.first_step = 0

            def on_train_begin(self, args, state, control, **kwargs):
                self.first_step = state.global_step

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    self.logs.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                                    if isinstance(v, int | float)}})

        return History()


def train_dpo(ws: Any, config: DPOTrainingConfig, *, resume_from: int | None = None, progress: bool = True,
              callbacks: list[Any] | None = None) -> PolicyTrainingResult:
    """Train, save and register a DPO policy; the run row records config, snapshot, metrics and status."""
    from reward.data import reproduce_snapshot, take_snapshot
    from store.runs import get_run

    start = resolve_policy(ws.db, config.policy)
    if resume_from is not None:
        pairs = reproduce_snapshot(ws.db, get_run(ws.db, resume_from).data_snapshot, config)
        snapshot = get_run(ws.db, resume_from).data_snapshot
    else:
        pairs, snapshot = take_snapshot(ws.db, config)
    quantization = qlora(config)  # QLoRA errors (no CUDA, no bitsandbytes) before the run row
    run_id, run_dir = start_policy_run(ws, RUN_KIND, config, snapshot, start, resume_from)
    try:
        return _train(ws, config, pairs, start, run_id, run_dir, resume_from, progress, callbacks, quantization)
    except BaseException as e:
        fail_run(ws, run_id, e)
        raise


def _train(ws: Any, config: DPOTrainingConfig, pairs: Any, start: StartPolicy, run_id: int, run_dir: Path,
           resume_from: int | None, progress: bool, callbacks: list[Any] | None,
           quantization: Any = None) -> PolicyTrainingResult:
    from transformers import EarlyStoppingCallback
    from trl import DPOTrainer

    from store.runs import finish_run, update_run

    train_pairs, eval_pairs = pairs[pairs["part"] == "train"], pairs[pairs["part"] == "eval"]
    if train_pairs.empty:
        raise ValueError("no training pairs after the split by prompt: collect pairs on more prompts")
    model, tokenizer = load_causal_lm(start, quantization=quantization, device=config.device)
    n_params, _ = count_parameters(model)
    dev = device_defaults(config, n_params)
    eval_set = pairs_dataset(eval_pairs) if len(eval_pairs) else None
    args = dpo_args(config, run_dir, dev, eval_set is not None, progress)
    history = _History.make()
    extra = [history, finite_loss_callback(), *(callbacks or [])]
    if eval_set is not None and config.early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    with tensorboard_dir(run_dir / "tensorboard"):
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=pairs_dataset(train_pairs),
                             eval_dataset=eval_set, processing_class=tokenizer,
                             peft_config=lora_config(config) if config.lora else None, callbacks=extra)
    total, trainable = count_parameters(trainer.model)
    update_run(ws.db, run_id, metrics={"device": dev.as_dict(), "parameters": total, "trainable": trainable,
                                       "precompute_ref_log_probs": args.precompute_ref_log_probs})
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=last_checkpoint(run_dir, resume_from))
    seconds = time.monotonic() - started
    st = trainer.state
    steps_run = st.global_step - history.first_step
    train_logs = [row for row in history.logs if "rewards/margins" in row]
    eval_logs = [row for row in history.logs if "eval_rewards/accuracies" in row]
    metrics: dict[str, Any] = {
        "global_step": st.global_step, "max_steps": st.max_steps, "stopped_early": st.global_step < st.max_steps,
        "train_loss": output.training_loss, "train_seconds": round(seconds, 1), "train_pairs": len(train_pairs),
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
    model_dir, adapter_dir = save_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, run_dir, start)
    metrics["adapter_dir"] = str(adapter_dir) if adapter_dir else None
    name = config.name or f"dpo-run{run_id}"
    rounds = sorted({int(r) for r in pairs["round"].dropna()}) if "round" in pairs else []
    keep = {k: v for k, v in metrics.items() if k not in ("first", "last", "device")}
    register_policy(ws, name, start, model_dir, run_id, rounds, {**keep, "trainer": "dpo"})
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return PolicyTrainingResult(run_id, name, run_dir, model_dir, metrics)
