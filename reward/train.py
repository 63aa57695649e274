"""Training a reward model on the workspace's preference pairs with TRL's `RewardTrainer`.

One call, `train_reward_model(ws, config)`:
  1. read the data snapshot (pairs, split by prompt), record it on a new run row, close the database;
  2. load the backbone with a 1-output head, wrap it in LoRA (head trained in full) or not (`method`);
  3. train with per-device defaults (see training/device.py), TensorBoard logs, checkpoints every `eval_steps`,
     early stopping on held-out accuracy, the best checkpoint loaded at the end;
  4. save the model folder, measure held-out accuracy exactly, add the model row (lineage + metrics), close the run.

Under `accelerate launch` every process runs this function: the main process does all database work and shares
the pairs and run folder with the others (`broadcast_object_list`); TRL/accelerate do the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward.backbone import load_backbone, lora_config, resolve_base, resolve_method, uses_eos, write_meta
from reward.config import RewardTrainingConfig, config_from_dict
from reward.data import to_dataset, to_ranking_dataset
from reward.pooling import check_pooling
from store.workspace import WorkspaceLike
from training.device import training_defaults
from training.hf import fit, history_callback, step_metrics, trainer_callbacks, trainer_kwargs
from training.models import count_parameters
from training.snapshot import describe_snapshot, parts, snapshot_rows

RUN_KIND = "reward"


@dataclass
class RewardTrainingResult:
    run_id: int
    model_name: str | None  # None on non-main processes
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]


class _RewardTrainer:  # built lazily: importing trl costs seconds
    cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.cls is None:
            from trl import RewardTrainer

            class LengthAwareRewardTrainer(RewardTrainer):
                """Keeps the `length` column for the length-grouped sampler (TRL drops unknown columns), and trains
                on whole rankings when the batches hold them (loss "ranking": `ranking_loss`); held-out batches
                are pairs, scored by TRL's own pairwise loss and accuracy."""

                def _set_signature_columns_if_needed(self):
                    if self._signature_columns is None:
                        self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "length", "ranking_ids",
                                                   "groups"]

                def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                    if "ranking_ids" in dataset.column_names:  # tokenized by reward.data.to_ranking_dataset
                        return dataset
                    return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

                def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                    if "groups" not in inputs:
                        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                    return ranking_loss(self, model, inputs, return_outputs)

            cls.cls = LengthAwareRewardTrainer
        return cls.cls


def ranking_loss(trainer: Any, model: Any, inputs: dict[str, Any], return_outputs: bool = False) -> Any:
    """Loss "ranking" for a batch of whole rankings (`RankingCollator`): every item scored in one forward pass,
    the scores laid out (rankings, items) and the mean Davidson-Luce NLL taken (reward/ranking_loss.py), plus TRL's
    reward centering generalised to K items: coef * mean over rankings of (2 * the ranking's mean score)^2, which
    is TRL's coef * (r_c + r_r)^2 for a pair. Logs TRL's reward statistics and the pairwise accuracy of the
    batch's untied pairs."""
    import torch

    from reward.probe import ranking_pair_accuracy
    from reward.ranking_loss import ranking_nll

    mode = "train" if trainer.model.training else "eval"
    groups = inputs["groups"]
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    flat = outputs.logits.squeeze(-1).float()
    real = groups >= 0
    scores = flat.new_zeros(groups.shape).masked_scatter(real, flat)
    loss = ranking_nll(scores, groups, reduction="mean")
    coef = trainer.args.center_rewards_coefficient
    if coef is not None:
        mean = (scores * real).sum(-1) / real.sum(-1).clamp(min=1)
        loss = loss + coef * torch.mean((2 * mean) ** 2)
    acc = trainer.accelerator
    if mode == "train":
        trainer._total_train_tokens += acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item() \
            // trainer._tp_size
    metrics = trainer._metrics[mode]
    metrics["num_tokens"] = [trainer._total_train_tokens]
    with torch.no_grad():
        # per process first: processes may hold different numbers of items, which a plain gather cannot stack
        stats = acc.gather(torch.stack([flat.min(), flat.mean(), flat.max()])[None])
        metrics["min_reward"].append(stats[:, 0].min().item())
        metrics["mean_reward"].append(stats[:, 1].mean().item())
        metrics["max_reward"].append(stats[:, 2].max().item())
        right, n = ranking_pair_accuracy(scores.detach(), groups)
        metrics["accuracy"].append(acc.gather_for_metrics(torch.tensor([right / max(n, 1)],
                                                                       device=flat.device)).mean().item())
    return (loss, outputs) if return_outputs else loss


class RankingCollator:
    """Batches of whole rankings (`ranking_ids`: each item's token ids, `groups`: their group indices) as one
    right-padded (items, tokens) batch plus (rankings, K) `groups` padded with -1; batches of pairs (held-out
    evaluation) go to TRL's pair collator."""

    def __init__(self, pad_token_id: int, pairs: Any):
        self.pad_token_id, self.pairs = pad_token_id, pairs

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        if "ranking_ids" not in examples[0]:
            return self.pairs(examples)
        seqs = [torch.tensor(ids) for ex in examples for ids in ex["ranking_ids"]]
        k = max(len(ex["groups"]) for ex in examples)
        groups = torch.full((len(examples), k), -1, dtype=torch.long)
        for b, ex in enumerate(examples):
            groups[b, :len(ex["groups"])] = torch.tensor(ex["groups"])
        return {"input_ids": pad_sequence(seqs, batch_first=True, padding_value=self.pad_token_id),
                "attention_mask": pad_sequence([torch.ones_like(x) for x in seqs], batch_first=True, padding_value=0),
                "groups": groups}


def _collator(tokenizer: Any, args: Any) -> RankingCollator:
    """The ranking collator, with TRL's pair collator for held-out pairs (the pad token as TRL would pick it)."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    if tokenizer.pad_token is None:  # what RewardTrainer does itself, before it builds its own collator
        tokenizer.pad_token = args.pad_token or tokenizer.eos_token
    return RankingCollator(tokenizer.pad_token_id, DataCollatorForPreference(
        pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of))


def resume_config(ws: WorkspaceLike, run: int | str,
                  overrides: dict[str, Any] | None = None) -> tuple[int, RewardTrainingConfig]:
    """(run id, its recorded config with `overrides`) for `--resume`: `run` is an id or "latest" (the newest
    reward run that did not succeed)."""
    from training.runs import resume_config as resume

    return resume(ws, RUN_KIND, run, overrides, config_from_dict)


def _prepare_run(ws: WorkspaceLike, config: RewardTrainingConfig, resume_from: int | None) -> dict[str, Any]:
    """Main process: snapshot, base, run row (status running) and run folder."""
    from store.models import UnknownModel, get_model
    from training.runs import open_run

    if config.name:  # fail now, not after training
        try:
            get_model(ws.db, config.name)
            raise ValueError(f"name: a model named {config.name!r} already exists in this workspace")
        except UnknownModel:
            pass
    base = resolve_base(ws.db, config.base)
    kind = "rankings" if config.loss == "ranking" else "pairs"
    pairs, snapshot = snapshot_rows(ws.db, config, kind, resume_from)
    if ("row" in pairs.columns) != (kind == "rankings"):  # --resume with another loss than the run's
        raise ValueError(f"loss: run {resume_from} trained on {'rankings' if 'row' in pairs.columns else 'pairs'}; "
                         f"resume it with loss = {'ranking' if 'row' in pairs.columns else 'pairwise'}")
    record = {"config": config.to_dict(), "base_location": base.location, "resumed_from": resume_from}
    run_id, run_dir = open_run(ws, RUN_KIND, record, snapshot, resume_from, rows=pairs)
    return {"pairs": pairs, "snapshot": snapshot, "run_id": run_id, "run_dir": run_dir, "base": base}


def _reward_args(config: RewardTrainingConfig, run_dir: Path, dev: Any, has_eval: bool, progress: bool) -> Any:
    from trl import RewardConfig

    return RewardConfig(
        **trainer_kwargs(config, run_dir, dev, has_eval, progress, config.learning_rate, config.eval_steps),
        weight_decay=config.weight_decay, center_rewards_coefficient=config.center_rewards_coefficient,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length", max_length=None,  # truncated (from the left) in reward.data, never dropped
        load_best_model_at_end=has_eval, metric_for_best_model="eval_accuracy" if has_eval else None,
        greater_is_better=True,
    )


def train_reward_model(ws: WorkspaceLike, config: RewardTrainingConfig, *, resume_from: int | None = None,
                       progress: bool = True, callbacks: list[Any] | None = None) -> RewardTrainingResult:
    """Train, save and register a reward model; the run row records config, snapshot, metrics and status."""
    from training.distributed import train_on_every_process

    prepared, result = train_on_every_process(
        ws.db, lambda: _prepare_run(ws, config, resume_from),
        lambda prepared, state: _train(ws, config, prepared, state, resume_from, progress, callbacks))
    run_dir = Path(prepared["run_dir"])
    return result if result is not None else RewardTrainingResult(prepared["run_id"], None, run_dir,
                                                                  run_dir / "model", {})


def _train(ws: WorkspaceLike, config: RewardTrainingConfig, prepared: dict[str, Any], state: Any,
           resume_from: int | None, progress: bool, callbacks: list[Any] | None) -> RewardTrainingResult | None:
    from store.runs import finish_run
    from training.checks import resume_checkpoint

    pairs, run_id, run_dir, base = prepared["pairs"], prepared["run_id"], Path(prepared["run_dir"]), prepared["base"]
    if config.method == "probe":
        if state.num_processes > 1:
            raise ValueError("method: 'probe' runs in one process (forward passes only); start it without "
                             "`accelerate launch`")
        return _train_probe(ws, config, pairs, run_id, run_dir, base, progress)
    checkpoint = resume_checkpoint(run_dir, resume_from)  # the newest complete one, read back before loading
    check_pooling(config.pooling, base.location)
    pooling = config.pooling
    model, tokenizer, heads = load_backbone(base.location, pooling)
    pair = pooling == "response_mean"
    n_params, _ = count_parameters(model)
    dev = training_defaults(config.device, n_params, config.bf16, config.gradient_checkpointing)
    method, method_reason = resolve_method(config.method, n_params)
    peft_config = lora_config(heads, config.lora_r, config.lora_alpha, config.lora_target_modules) \
        if method == "lora" else None
    append_eos = uses_eos(tokenizer)
    margin_scale = config.margin_scale if config.margin else None
    ranking = config.loss == "ranking"
    train_pairs, eval_pairs = parts(pairs, "training rankings" if ranking else "training pairs")
    train_set = to_ranking_dataset(train_pairs, tokenizer, config.max_length, append_eos, pair) if ranking else \
        to_dataset(train_pairs, tokenizer, config.max_length, append_eos, margin_scale, pair)
    eval_set = to_dataset(eval_pairs, tokenizer, config.max_length, append_eos, margin_scale, pair) \
        if len(eval_pairs) else None
    args = _reward_args(config, run_dir, dev, eval_set is not None, progress)
    clock = history_callback()
    extra = trainer_callbacks(clock, config.early_stopping_patience, eval_set is not None, callbacks)
    trainer, output, seconds = fit(
        ws.db, run_id, run_dir, dev, lambda: _RewardTrainer.get()(
            model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
            peft_config=peft_config, callbacks=extra, data_collator=_collator(tokenizer, args) if ranking else None),
        checkpoint, {"method": method, "method_reason": method_reason, "heads": heads, "append_eos": append_eos,
                     "pooling": pooling, "loss": config.loss}, write=state.is_main_process)
    model_dir = run_dir / "model"
    trainer.save_model(str(model_dir))
    if not state.is_main_process:
        return None
    meta = {"format": 1, "method": method, "base": base.location, "max_length": config.max_length,
            "append_eos": append_eos, "pooling": pooling, "run_id": run_id, "heads": heads}
    write_meta(model_dir, meta)
    tokenizer.save_pretrained(str(model_dir))
    metrics = _final_metrics(trainer, output, clock, seconds, eval_pairs, tokenizer, config, append_eos,
                             _n_pairs(train_pairs) if ranking else len(train_pairs), pair)
    metrics["loss"] = config.loss
    if ranking:
        metrics["train_rankings"] = len(train_pairs)
    name = config.name or f"reward-run{run_id}"
    _register(ws, name, method, base, model_dir, pairs, run_id, metrics)
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return RewardTrainingResult(run_id, name, run_dir, model_dir, metrics)


def _train_probe(ws: WorkspaceLike, config: RewardTrainingConfig, pairs: Any, run_id: int, run_dir: Path, base: Any,
                 progress: bool) -> RewardTrainingResult:
    """method 'probe' (reward/probe.py): embed every pair once with the backbone frozen, fit the linear reward."""
    import numpy as np
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from reward.data import prompt_string
    from reward.evaluate import pair_metrics
    from reward.probe import (
        fit_probe,
        fit_ranking_probe,
        load_frozen_backbone,
        pair_features,
        probe_precision,
        probe_reads,
        quantize_int8,
        response_features,
        save_probe,
    )
    from store.runs import finish_run, update_run
    from training.device import resolve_device

    ranking = config.loss == "ranking"
    train_pairs, eval_pairs = parts(pairs, "training rankings" if ranking else "training pairs")
    device = resolve_device(config.device)
    precision = probe_precision(config.probe_precision, device)
    model = load_frozen_backbone(base.location, device)
    tokenizer = AutoTokenizer.from_pretrained(base.location)
    n_params, _ = count_parameters(model)
    if precision == "int8":
        model = quantize_int8(model)
    update_run(ws.db, run_id, metrics={"device": {"device": device}, "method": "probe", "parameters": n_params,
                                       "trainable": model.config.hidden_size, "pooling": "response_mean",
                                       "probe_layer": config.probe_layer, "probe_precision": precision,
                                       "loss": config.loss})
    started = time.monotonic()
    features = {}
    reads = probe_reads(config.probe_layer, config.probe_layers)
    parts_to_embed = (("eval", eval_pairs),) if ranking else (("train", train_pairs), ("eval", eval_pairs))
    n_train_items = sum(len(r) for r in train_pairs["responses"]) if ranking else 0
    with tqdm(total=2 * len(eval_pairs) + (n_train_items if ranking else 2 * len(train_pairs)),
              disable=not progress, desc="probe: embedding responses") as bar:
        if ranking:
            items, groups, prompts, texts = _ranking_items(train_pairs, tokenizer)
            features["train", "items"] = response_features(model, tokenizer, prompts, texts, config.max_length,
                                                           config.probe_layer, lambda: bar.update(), reads=reads)
        for part, frame in parts_to_embed:
            prompts = [prompt_string(t, m, tokenizer) for t, m in zip(frame["prompt_text"], frame["prompt_messages"],
                                                                      strict=True)]
            features[part, "chosen"], features[part, "rejected"] = pair_features(
                model, tokenizer, prompts, [str(x) for x in frame["chosen"]], [str(x) for x in frame["rejected"]],
                config.max_length, config.probe_layer, lambda: bar.update(), reads=reads)
    for (part, side), values in features.items():
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            if side == "items":
                row = train_pairs.iloc[next(b for b, rows in enumerate(items) if bad[rows].any())]
                where = f"first: comparison {row['comparison_id']}, judgment {row['judgment_id']}"
            else:
                row = (train_pairs if part == "train" else eval_pairs).iloc[int(bad.argmax())]
                where = f"first: comparison {row['comparison_id']}, response {row[f'{side}_id']}"
            raise ValueError(f"probe: the backbone's layer states are not finite for {int(bad.sum())} {side} "
                             f"responses ({where}); is the base model damaged?")
    if ranking:
        probe = fit_ranking_probe(features["train", "items"], items, groups, config.probe_penalties,
                                  config.probe_folds, config.seed, config.probe_layer, config.max_length, precision)
    else:
        probe = fit_probe(features["train", "chosen"], features["train", "rejected"], config.probe_penalties,
                          config.probe_folds, config.seed, config.probe_layer, config.max_length, precision,
                          groups=list(train_pairs["prompt_key"]) if config.probe_cv == "prompts" else None)
    probe.layers = list(config.probe_layers)
    seconds = time.monotonic() - started
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    save_probe(model_dir, probe)
    tokenizer.save_pretrained(str(model_dir))
    write_meta(model_dir, {"format": 1, "method": "probe", "base": base.location, "max_length": config.max_length,
                           "append_eos": False, "pooling": "response_mean", "run_id": run_id, "heads": []})
    metrics: dict[str, Any] = {
        "global_step": 0, "train_pairs": _n_pairs(train_pairs) if ranking else len(train_pairs),
        "train_seconds": round(seconds, 1), "pairs_per_s": round(len(pairs) / max(seconds, 1e-9), 3),
        "penalty": probe.penalty, "cv_accuracy": probe.cv_accuracy, "probe_layer": probe.layer,
        "probe_layers": probe.layers, "probe_precision": precision, "loss": config.loss,
    }
    if ranking:
        metrics["train_rankings"] = len(train_pairs)
    if len(eval_pairs):
        held = pair_metrics(probe.rewards(features["eval", "chosen"]), probe.rewards(features["eval", "rejected"]),
                            list(eval_pairs["chosen"]), list(eval_pairs["rejected"]))
        metrics.update({f"eval_{k}": v for k, v in held.items()})
    name = config.name or f"reward-run{run_id}"
    _register(ws, name, "probe", base, model_dir, pairs, run_id, metrics)
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return RewardTrainingResult(run_id, name, run_dir, model_dir, metrics)


def _ranking_items(rankings: Any, tokenizer: Any) -> tuple[list[list[int]], list[list[int]], list[str], list[str]]:
    """The train rankings flattened for `response_features`: per ranking its items' positions and group indices,
    and per item its prompt (as the reward model reads it) and text."""
    from reward.data import prompt_string

    items: list[list[int]] = []
    groups: list[list[int]] = []
    prompts: list[str] = []
    texts: list[str] = []
    for text, messages, responses, gs in zip(rankings["prompt_text"], rankings["prompt_messages"],
                                             rankings["responses"], rankings["groups"], strict=True):
        prompt = prompt_string(text, messages, tokenizer)
        items.append(list(range(len(texts), len(texts) + len(responses))))
        groups.append([int(g) for g in gs])
        prompts += [prompt] * len(responses)
        texts += [str(r) for r in responses]
    return items, groups, prompts, texts


def _n_pairs(rankings: Any) -> int:
    """How many untied pairs the rankings hold (what a pairwise run would train on, per reviewer)."""
    return int(sum(sum(a < b for a in gs for b in gs) for gs in (list(map(int, g)) for g in rankings["groups"])))


def _final_metrics(trainer: Any, output: Any, clock: Any, seconds: float, eval_pairs: Any, tokenizer: Any,
                   config: RewardTrainingConfig, append_eos: bool, n_train: int, pair: bool) -> dict[str, Any]:
    from reward.evaluate import pair_metrics, score_pairs

    st = trainer.state
    steps_run = st.global_step - clock.first_step
    metrics: dict[str, Any] = {
        **step_metrics(trainer, output, seconds), "train_pairs": n_train,
        "pairs_per_s": round(steps_run * config.per_device_train_batch_size * config.gradient_accumulation_steps
                             * trainer.args.world_size / max(seconds, 1e-9), 3),
        "best_checkpoint": st.best_model_checkpoint, "best_eval_accuracy_during_training": st.best_metric,
    }
    if len(eval_pairs):
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.eval()
        chosen, rejected = score_pairs(model, tokenizer, eval_pairs, config.max_length, append_eos,
                                       config.per_device_eval_batch_size, pair)
        held = pair_metrics(chosen, rejected, list(eval_pairs["chosen"]), list(eval_pairs["rejected"]))
        metrics.update({f"eval_{k}": v for k, v in held.items()})
    return metrics


def _register(ws: WorkspaceLike, name: str, method: str, base: Any, model_dir: Path, pairs: Any,
              run_id: int, metrics: dict[str, Any]) -> int:
    from store.models import add_model
    from training.models import parent_id

    parent = base.parent_id  # a built-in backbone is recorded once, so lineage reaches it
    if parent is None and base.builtin:
        parent = parent_id(ws.db, None, base.builtin, base.location)
    rounds = [int(r) for r in pairs["round"].dropna()] if "round" in pairs else []
    lora = method == "lora"
    keep = ("eval_accuracy", "eval_accuracy_low", "eval_accuracy_high", "eval_pairs", "eval_length_longer_accuracy",
            "train_pairs", "global_step", "train_seconds", "pairs_per_s")
    return add_model(ws.db, name, "reward", base=base.location, path=None if lora else str(model_dir),
                     adapter_path=str(model_dir) if lora else None, parent_id=parent,
                     round=max(rounds) if rounds else None, run_id=run_id,
                     metrics={k: metrics[k] for k in keep if k in metrics})


__all__ = ["train_reward_model", "resume_config", "RewardTrainingResult", "describe_snapshot"]
