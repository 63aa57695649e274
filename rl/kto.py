"""KTO on unpaired thumbs with TRL's `KTOTrainer`.

The rows are `store.labels.kto_records` (the rows `rankloop export kto` writes), taken and saved in the run folder by
training/snapshot.py (kind "kto"): per judgment, its ranking's top group is desirable and its bottom group
undesirable; an "all bad" judgment marks every answer of its comparison undesirable (with `aggregate`: each
response's majority label). Rows are conversational (the prompt's chat messages + the answer), as DPO's.

`train_kto(ws, config)` has DPO's life (rl/training.py): the snapshot on a new run row, the starting policy wrapped
in LoRA (the reference is the same model with the adapters off), per-device defaults, checkpoints for `--resume`,
early stopping on the held-out KTO loss, the merged policy registered with its parent, run and snapshot. Before the
run row is written it refuses a snapshot whose training rows carry only one kind of label: KTO's loss pulls the
desirable answers up and the undesirable ones down against a shared KL baseline, and with one side only it is not
the method any more (export the labels to see them: `rankloop export kto`).

TRL's KL estimate pairs each prompt with the answer of the next row of its batch (a mismatched pair), reading the
rows in order (`train_sampling_strategy="sequential"`). `kto_order` orders the training rows so that each stretch
carries both labels in proportion and neighbours come from different prompts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rl.config import KTOTrainingConfig, PolicyConfigError
from rl.training import (
    PolicyTrainingResult,
    StartPolicy,
    finish_trainer,
    load_causal_lm,
    load_for_training,
    lora_config,
    train_policy,
    trainer_kwargs,
)
from store.workspace import WorkspaceLike
from training.checks import resume_checkpoint
from training.hf import fit, history_callback, step_metrics, trainer_callbacks
from training.snapshot import parts

RUN_KIND = "kto"
WINDOW = 64  # rows of a label's queue looked at for the next one (kto_order)
LOGGED = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


def kto_dataset(frame: Any) -> Any:
    """Conversational unpaired rows {prompt, completion, label} (`store.rows.trl_rows`, as `rankloop export kto
    --style conversational`)."""
    from datasets import Dataset

    from store.rows import trl_rows

    return Dataset.from_list(trl_rows("kto", frame, "conversational"))


def kto_order(frame: Any) -> Any:
    """The training rows in the order TRL reads them (deterministic, so a resume sees the same order).

    Two aims, because TRL reads rows in order (`sequential`) and estimates the KL baseline of a batch from each
    prompt paired with its neighbour's answer: every stretch of rows carries both labels in their overall
    proportion (a batch of one label only has no contrast), and neighbours come from different prompts (a
    mismatched pair). Each label's rows are dealt round-robin over their prompts; then the label whose rows are
    least used (as a share of its total) goes next, its first row whose prompt differs from the last one's."""
    positions: dict[bool, list[int]] = {True: [], False: []}
    for label in (True, False):
        groups: dict[Any, list[int]] = {}
        for position, (key, value) in enumerate(zip(frame["prompt_key"], frame["label"], strict=True)):
            if bool(value) == label:
                groups.setdefault(key, []).append(position)
        queues, depth = list(groups.values()), 0
        while any(depth < len(q) for q in queues):
            positions[label] += [q[depth] for q in queues if depth < len(q)]
            depth += 1
    total = {label: len(rows) for label, rows in positions.items()}
    used = dict.fromkeys(total, 0)
    keys = list(frame["prompt_key"])
    left = Counter(keys)  # rows not placed yet, per prompt
    order: list[int] = []
    while len(order) < len(frame):
        label = min((lbl for lbl in (True, False) if positions[lbl]),
                    key=lambda lbl: ((used[lbl] + 0.5) / total[lbl], not lbl))
        queue, last = positions[label], keys[order[-1]] if order else None
        # among the next rows, one of another prompt than the last, the prompt with most rows left first (so no
        # prompt is left over for the end, where it could only follow itself)
        window = [i for i in range(min(len(queue), WINDOW)) if keys[queue[i]] != last] or [0]
        pick = max(window, key=lambda i: (left[keys[queue[i]]], -i))
        row = queue.pop(pick)
        order.append(row)
        left[keys[row]] -= 1
        used[label] += 1
    return frame.iloc[order].reset_index(drop=True)


def label_counts(frame: Any) -> tuple[int, int]:
    """(desirable, undesirable) rows."""
    desirable = int(sum(bool(v) for v in frame["label"]))
    return desirable, len(frame) - desirable


def check_labels(frame: Any, config: KTOTrainingConfig) -> None:
    """KTO needs both kinds of label among the training rows: a clear error (before any run row) otherwise."""
    train, _ = parts(frame, "KTO labels")
    desirable, undesirable = label_counts(train)
    if desirable and undesirable:
        return
    have, missing = ("desirable", "undesirable") if desirable else ("undesirable", "desirable")
    hint = ("rankings with at least two groups give both (their top group desirable, bottom group undesirable)"
            if missing == "desirable" else "rankings of two or more groups (bottom group) or \"all bad\" judgments "
            "give them")
    raise PolicyConfigError(
        f"KTO needs both desirable and undesirable labels, but the {len(train)} training rows of this snapshot are "
        f"all {have} (rounds {config.rounds or 'all'}, reviewers {config.reviewers or 'all'}, "
        f"{'aggregated' if config.aggregate else 'per reviewer'}): {hint}; see them with `rankloop export kto`")


def balanced_weights(config: KTOTrainingConfig, desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable weight, undesirable weight): the config's, else weights with weight x rows equal on both sides
    (the larger side weighs 1)."""
    if config.desirable_weight is not None and config.undesirable_weight is not None:
        return config.desirable_weight, config.undesirable_weight
    if config.desirable_weight is not None:
        return config.desirable_weight, config.desirable_weight * desirable / max(undesirable, 1)
    if config.undesirable_weight is not None:
        return config.undesirable_weight * undesirable / max(desirable, 1), config.undesirable_weight
    big = max(desirable, undesirable, 1)
    return big / max(desirable, 1), big / max(undesirable, 1)


def kto_args(config: KTOTrainingConfig, run_dir: Path, dev: Any, has_eval: bool, progress: bool,
             weights: tuple[float, float]) -> Any:
    from trl import KTOConfig

    stop_early = has_eval and config.early_stopping_patience > 0
    return KTOConfig(
        **trainer_kwargs(config, run_dir, dev, has_eval, progress), beta=config.beta, loss_type=config.loss_type,
        desirable_weight=weights[0], undesirable_weight=weights[1], train_sampling_strategy="sequential",
        metric_for_best_model="eval_loss" if stop_early else None, greater_is_better=False,
        load_best_model_at_end=False,
    )


def train_kto(ws: WorkspaceLike, config: KTOTrainingConfig, *, resume_from: int | None = None, progress: bool = True,
              callbacks: list[Any] | None = None) -> PolicyTrainingResult:
    """Train, save and register a KTO policy; the run row records config, snapshot, metrics and status.

    The labels are checked between the snapshot and the run row (both kinds needed)."""
    def checked(rows: Any, snapshot: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        check_labels(rows, config)
        return rows, snapshot

    return train_policy(ws, RUN_KIND, "kto", config, _train, resume_from, progress, callbacks, checked)


def _train(ws: WorkspaceLike, config: KTOTrainingConfig, frame: Any, start: StartPolicy, run_id: int, run_dir: Path,
           resume_from: int | None, progress: bool, callbacks: list[Any] | None,
           quantization: Any = None, state: Any = None) -> PolicyTrainingResult | None:
    from trl import KTOTrainer

    train, held = parts(frame, "KTO labels")
    train = kto_order(train)
    desirable, undesirable = label_counts(train)
    weights = balanced_weights(config, desirable, undesirable)
    model, tokenizer, dev = load_for_training(start, config, quantization)
    # full fine-tuning: the reference is a second copy of the starting policy (TRL would otherwise reload the
    # model's config name, which for a merged LoRA policy is its base, not the policy)
    ref_model = None if config.lora else load_causal_lm(start)[0]
    eval_set = kto_dataset(kto_order(held)) if len(held) else None
    args = kto_args(config, run_dir, dev, eval_set is not None, progress, weights)
    history = history_callback()
    extra = trainer_callbacks(history, config.early_stopping_patience, eval_set is not None, callbacks)
    trainer, output, seconds = fit(
        ws.db, run_id, run_dir, dev, lambda: KTOTrainer(
            model=model, ref_model=ref_model, args=args, train_dataset=kto_dataset(train), eval_dataset=eval_set,
            processing_class=tokenizer, peft_config=lora_config(config) if config.lora else None, callbacks=extra),
        resume_checkpoint(run_dir, resume_from),
        {"desirable_weight": weights[0], "undesirable_weight": weights[1]},
        write=state is None or state.is_main_process)
    steps_run = trainer.state.global_step - history.first_step
    train_logs = [row for row in history.logs if "loss" in row and "eval_loss" not in row]
    evals = [row for row in history.logs if "eval_loss" in row]
    metrics: dict[str, Any] = {
        **step_metrics(trainer, output, seconds), "train_rows": len(train), "desirable": desirable,
        "undesirable": undesirable, "desirable_weight": weights[0], "undesirable_weight": weights[1],
        "rows_per_s": round(steps_run * config.per_device_train_batch_size * config.gradient_accumulation_steps
                            * args.world_size / max(seconds, 1e-9), 3),
        "device": dev.as_dict(),
        "first": {k: train_logs[0][k] for k in LOGGED if k in train_logs[0]} if train_logs else {},
        "last": {k: train_logs[-1][k] for k in LOGGED if k in train_logs[-1]} if train_logs else {},
        "first_loss": train_logs[0]["loss"] if train_logs else None,
        "last_loss": train_logs[-1]["loss"] if train_logs else None,
    }
    if evals:
        metrics["eval_loss"] = evals[-1]["eval_loss"]
        metrics["eval_margin"] = evals[-1].get("eval_rewards/margins")
        metrics["eval_rows"] = len(held)
    rounds = sorted({int(r) for r in frame["round"].dropna()}) if "round" in frame else []
    keep = {k: v for k, v in metrics.items() if k not in ("first", "last", "device")}
    return finish_trainer(ws, trainer, tokenizer, start, run_id, run_dir,
                         config.name or f"kto-run{run_id}", rounds, metrics, {**keep, "trainer": "kto"}, state)
