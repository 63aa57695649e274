"""SFT on reviewers' edited answers and top-ranked responses with TRL's `SFTTrainer` (completion-only loss).

The rows are `store.labels.sft_records` (the same rows `rankloop export sft` writes), taken and saved in the run
folder by training/snapshot.py (kind "sft"): one per reviewer edit and
one per judgment's single best response (or per comparison's majority best with `aggregate`). They become
conversational prompt-completion rows, so TRL masks the prompt and the loss covers only the answer's tokens.
The usual first step before preference training; DPO's `sft_replay` mixes the same idea into DPO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl.config import SFTTrainingConfig
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

RUN_KIND = "sft"


def sft_dataset(frame: Any) -> Any:
    """Conversational prompt-completion rows (`store.rows`): TRL computes the loss on the completion only."""
    from datasets import Dataset

    from store.rows import trl_rows

    return Dataset.from_list(trl_rows("sft", frame, "prompt-completion"))


def sft_args(config: SFTTrainingConfig, run_dir: Path, dev: Any, has_eval: bool, progress: bool) -> Any:
    """TRL's SFTConfig: the loss on the answer only, no packing (padding-free rows need FlashAttention, which a CPU
    lacks). Random batches: transformers' `group_by_length` sampler groups little on small sets and also orders the
    held-out rows, where it fails when TRL has dropped every one of them (prompts filling max_length)."""
    from trl import SFTConfig

    stop_early = has_eval and config.early_stopping_patience > 0
    return SFTConfig(**trainer_kwargs(config, run_dir, dev, has_eval, progress), completion_only_loss=True,
                     packing=False, metric_for_best_model="eval_loss" if stop_early else None, greater_is_better=False)


def train_sft(ws: WorkspaceLike, config: SFTTrainingConfig, *, resume_from: int | None = None, progress: bool = True,
              callbacks: list[Any] | None = None) -> PolicyTrainingResult:
    """Train, save and register an SFT policy; the run row records config, snapshot, metrics and status."""
    return train_policy(ws, RUN_KIND, "sft", config, _train, resume_from, progress, callbacks)


def _train(ws: WorkspaceLike, config: SFTTrainingConfig, frame: Any, start: StartPolicy, run_id: int, run_dir: Path,
           resume_from: int | None, progress: bool, callbacks: list[Any] | None,
           quantization: Any = None, state: Any = None) -> PolicyTrainingResult | None:
    from trl import SFTTrainer

    train, held = parts(frame, "SFT rows")
    model, tokenizer, dev = load_for_training(start, config, quantization)
    eval_set = sft_dataset(held) if len(held) else None
    stop_early = eval_set is not None and config.early_stopping_patience > 0
    args = sft_args(config, run_dir, dev, eval_set is not None, progress)
    history = history_callback()
    extra = trainer_callbacks(history, config.early_stopping_patience, stop_early, callbacks)
    trainer, output, seconds = fit(
        ws.db, run_id, run_dir, dev, lambda: SFTTrainer(
            model=model, args=args, train_dataset=sft_dataset(train), eval_dataset=eval_set,
            processing_class=tokenizer, peft_config=lora_config(config) if config.lora else None, callbacks=extra),
        resume_checkpoint(run_dir, resume_from), write=state is None or state.is_main_process)
    losses = [row["loss"] for row in history.logs if "loss" in row]
    evals = [row["eval_loss"] for row in history.logs if "eval_loss" in row]
    metrics: dict[str, Any] = {
        **step_metrics(trainer, output, seconds), "train_rows": len(train),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "eval_loss": evals[-1] if evals else None, "eval_rows": len(held),
    }
    rounds = sorted({int(r) for r in frame["round"].dropna()})
    return finish_trainer(ws, trainer, tokenizer, start, run_id, run_dir,
                         config.name or f"sft-run{run_id}", rounds, metrics, {**metrics, "trainer": "sft"}, state)
