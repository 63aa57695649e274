"""RLOO and GRPO through TRL's stable trainers (`RLOOTrainer`, `GRPOTrainer`): `rankloop train ppo --algo rloo|grpo`.

rl/ppo_run.py does the bookkeeping shared with our PPO (prompts snapshot, reward model, run row, saved policy and
its lineage); this module turns the `[ppo]` config into TRL's and runs the trainer. One iteration = one TRL
optimizer step:

  1. take `rollout_batch_size` workspace prompts (chat messages; TRL applies the policy's chat template);
  2. sample `num_generations` responses to each with the LoRA policy (up to `max_new_tokens`, `temperature`);
  3. score each with the reward model, minus `missing_eos_penalty` for a response that never ends (as our PPO);
  4. advantage = a response's reward against the other responses to the same prompt: RLOO subtracts the mean of
     the others' rewards (leave-one-out baseline), GRPO subtracts the group mean and divides by the group std;
  5. KL to the reference (the starting policy: the same weights with the LoRA adapters off), weight
     `init_kl_coef` (fixed): RLOO subtracts it from the reward, GRPO adds it to the loss per token;
  6. one policy-gradient update, accumulated over `num_minibatches` micro-batches.

There is no value head, GAE or adaptive KL controller: those `[ppo]` fields are marked "(ppo only)".

With the sampling engine 'vllm' (`[generation] engine`, rl/vllm_engine.py) step 2 runs on TRL's vLLM mode,
colocated (`use_vllm=True, vllm_mode="colocate"`: vLLM shares the training GPU, TRL syncs the weights into it each
step); 'hf' (the default) samples with transformers' generate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rl.ppo_config import PPOTrainingConfig
from rl.ppo_train import RewardFn

TRL_LOGGED = ("score", "reward", "kl", "completions/mean_length", "completions/clipped_ratio", "entropy")


class RewardModelReward:
    """TRL reward function: the reward model's score (`score_fn(prompts, responses)`) minus `missing_eos_penalty`
    for a response that never emitted EOS. Logs the raw score as `score` (the number our PPO logs)."""

    __name__ = "reward_model"  # TRL logs `rewards/reward_model/mean`

    def __init__(self, score_fn: RewardFn, missing_eos_penalty: float, eos_ids: list[int]) -> None:
        self.score_fn, self.penalty, self.eos_ids = score_fn, missing_eos_penalty, set(eos_ids)

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 log_metric: Any = None, **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        raw = self.score_fn(list(prompts), texts)
        finished = [bool(ids) and ids[-1] in self.eos_ids for ids in completion_ids]
        if log_metric is not None:
            log_metric("score", sum(raw) / len(raw))
            log_metric("missing_eos", finished.count(False) / len(finished))
        return [float(r) - self.penalty * (not f) for r, f in zip(raw, finished, strict=True)]


def vllm_args(engine: str) -> dict[str, Any]:
    """The TRL config fields of the sampling engine: TRL's colocated vLLM mode for 'vllm', nothing for 'hf'."""
    if engine == "hf":
        return {}
    if engine != "vllm":
        raise ValueError(f"engine: must be 'hf' or 'vllm', got {engine!r}")
    from rl.vllm_engine import require_vllm

    require_vllm()
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}


def trl_args(config: PPOTrainingConfig, run_dir: Path, dev: Any, progress: bool, engine: str = "hf",
             processes: int = 1) -> Any:
    """RLOOConfig / GRPOConfig from the `[ppo]` config; one optimizer step per rollout batch (see the README for
    each default that differs from TRL's). `engine` 'vllm': TRL samples with vLLM, colocated (`vllm_args`).

    Under `accelerate launch` (`processes` > 1) the rollout batch stays the config's: each process samples and
    trains on its share of every micro-batch, so the completions of a micro-batch must split evenly."""
    from trl import GRPOConfig, RLOOConfig

    cls = RLOOConfig if config.algo == "rloo" else GRPOConfig
    completions = config.rollout_batch_size * config.num_generations  # per iteration
    if completions % (config.num_minibatches * processes):
        raise ValueError(
            f"rollout_batch_size x num_generations = {completions} completions per iteration do not split into "
            f"num_minibatches ({config.num_minibatches}) x {processes} processes evenly: under accelerate launch "
            "each process takes an equal share of every micro-batch; change rollout_batch_size or num_generations")
    return cls(
        **vllm_args(engine),
        output_dir=str(run_dir), seed=config.seed, data_seed=config.seed, max_steps=config.max_steps,
        learning_rate=config.learning_rate, max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=completions // (config.num_minibatches * processes),
        gradient_accumulation_steps=config.num_minibatches, num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens, temperature=config.temperature, beta=config.init_kl_coef,
        epsilon=config.cliprange, use_cpu=dev.device == "cpu", bf16=dev.bf16,
        activation_checkpointing=dev.gradient_checkpointing, save_strategy="steps", save_steps=config.save_steps,
        logging_steps=config.logging_steps, report_to=list(config.report_to) or "none", disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def prompts_dataset(tokenizer: Any, prompts: list[list[dict[str, str]]], config: PPOTrainingConfig) -> Any:
    """(dataset of {"prompt": messages}, prompts left out for being longer than `max_prompt_length`).

    TRL 1.16's RLOO/GRPO do not truncate prompts, so a longer one is left out rather than cut. With fewer prompts
    than `rollout_batch_size` the list is repeated: TRL drops an incomplete batch of prompts."""
    from datasets import Dataset

    from rl.sampling import prompt_ids

    kept = [p for p in prompts if len(prompt_ids(tokenizer, p)) <= config.max_prompt_length]
    if not kept:
        raise ValueError(f"every prompt is longer than max_prompt_length ({config.max_prompt_length} tokens)")
    rows = kept * -(-config.rollout_batch_size // len(kept))
    return Dataset.from_list([{"prompt": p} for p in rows]), len(prompts) - len(kept)


def train_rloo_grpo(config: PPOTrainingConfig, model: Any, tokenizer: Any, score_fn: RewardFn,
                    prompts: list[list[dict[str, str]]], run_dir: Path, dev: Any, resume_from: int | None,
                    progress: bool, engine: str = "hf") -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    """Train with TRL's RLOOTrainer or GRPOTrainer: (the trained model (peft or full), metrics, logged rows).
    One process; under `accelerate launch` use `run_rloo_grpo` and `rl.training.finish_trainer`."""
    trainer, metrics, rows = run_rloo_grpo(config, model, tokenizer, score_fn, prompts, run_dir, dev, resume_from,
                                           progress, engine)
    return trainer.accelerator.unwrap_model(trainer.model), metrics, rows


def run_rloo_grpo(config: PPOTrainingConfig, model: Any, tokenizer: Any, score_fn: RewardFn,
                  prompts: list[list[dict[str, str]]], run_dir: Path, dev: Any, resume_from: int | None,
                  progress: bool, engine: str = "hf") -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    """Train with TRL's RLOOTrainer or GRPOTrainer: (the trainer, metrics, logged rows). Under `accelerate launch`
    every process calls it (each samples and scores its share of the prompts; TRL gathers the rewards of a group)
    and then `rl.training.finish_trainer(..., trainer, ..., state)`, which saves the gathered weights and lets the
    main process alone register the policy."""
    from trl import GRPOTrainer, RLOOTrainer

    from rl.sampling import eos_ids
    from rl.training import lora_config
    from training.checks import resume_checkpoint
    from training.distributed import process_state
    from training.hf import history_callback, tensorboard_dir

    dataset, too_long = prompts_dataset(tokenizer, prompts, config)
    reward = RewardModelReward(score_fn, config.missing_eos_penalty, eos_ids(model, tokenizer))
    history = history_callback()
    cls = RLOOTrainer if config.algo == "rloo" else GRPOTrainer
    args = trl_args(config, run_dir, dev, progress, engine, process_state().num_processes)
    with tensorboard_dir(run_dir / "tensorboard"):
        trainer = cls(model=model, reward_funcs=reward, args=args,
                      train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora_config(config) if config.lora else None, callbacks=[history])
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, resume_from))
    seconds = time.monotonic() - started
    logs = [row for row in history.logs if "score" in row]
    window = logs[-5:]

    def mean(key: str) -> float | None:
        values = [row[key] for row in window if row.get(key) is not None]
        return sum(values) / len(values) if values else None

    steps_run = trainer.state.global_step - history.first_step
    metrics: dict[str, Any] = {
        "global_step": trainer.state.global_step, "train_seconds": round(seconds, 1),
        "steps_per_s": round(steps_run / max(seconds, 1e-9), 4), "first_score": logs[0]["score"] if logs else None,
        "score": mean("score"), "kl": mean("kl") if config.init_kl_coef else None, "kl_coef": config.init_kl_coef,
        "response_length": mean("completions/mean_length"), "missing_eos": mean("missing_eos"),
        "prompts_too_long": too_long, "num_generations": config.num_generations,
    }
    rows = [{k: v for k, v in row.items() if k in ("step", "missing_eos", *TRL_LOGGED)} for row in logs]
    return trainer, metrics, rows
