"""`train_ppo(ws, config)`: PPO on the workspace's prompts against a reward model, with a run row, TensorBoard
logs, checkpoints that resume (`resume_from=RUN`) and the new policy registered with its lineage (parent policy,
reward model, prompts snapshot; the prompts are saved in the run folder, training/snapshot.py kind "prompts").
`config.algo` 'rloo' or 'grpo' swaps our PPO loop for TRL's RLOOTrainer or GRPOTrainer (rl/rloo_grpo.py) with the
same prompts, reward model and bookkeeping; the run kind stays 'ppo' (the run's config and the model row's
`trainer` metric name the algorithm)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rl.ppo_config import PPOTrainingConfig
from rl.ppo_train import PPOLoop, RewardFn, last_ppo_checkpoint
from rl.training import (
    PolicyTrainingResult,
    finish_policy,
    load_causal_lm,
    resolve_policy,
)
from store.models import newest_model
from store.workspace import WorkspaceLike

RUN_KIND = "ppo"


def resume_ppo_config(ws: WorkspaceLike, run: int | str, overrides: dict[str, Any] | None = None) -> tuple[int, Any]:
    from rl.training import resume_config

    return resume_config(ws, RUN_KIND, PPOTrainingConfig, run, overrides)


def _tensorboard(config: PPOTrainingConfig, folder: Path) -> Any:
    if "tensorboard" not in config.report_to:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logs still go to the run row
        return None
    return SummaryWriter(str(folder))


def train_ppo(ws: WorkspaceLike, config: PPOTrainingConfig, *, reward_fn: RewardFn | None = None,
              resume_from: int | None = None, progress: bool = True) -> PolicyTrainingResult:
    """Train, save and register a PPO (or RLOO / GRPO, by `config.algo`) policy. `reward_fn(prompts, responses) ->
    scores` replaces the reward model (tests use a toy reward); by default the reward model `config.reward` (or the
    newest) scores.

    Under `accelerate launch` every process runs this: the main one alone reads the workspace (starting policy,
    prompts snapshot, reward model row), opens the run and `share`s them; every process loads the policy and the
    reward model and trains on its share of each rollout batch (rl/ppo_train.py); the main one alone logs,
    checkpoints, registers the policy and closes the run. A failure on any process ends the run as failed
    (training.distributed.every_process_guard). The others return a result without a model name."""
    from rl.sampling import check_engine, workspace_engine
    from training.distributed import train_on_every_process

    engine = workspace_engine(ws) if config.algo != "ppo" else "hf"  # RLOO/GRPO: TRL's vLLM mode with 'vllm'
    check_engine(engine)  # vLLM missing: said before the run row
    return train_on_every_process(
        ws.db, lambda: _prepare(ws, config, reward_fn is None, resume_from),
        lambda prepared, state: _train(ws, config, prepared, reward_fn, resume_from, progress, engine, state))[1]


def _prepare(ws: WorkspaceLike, config: PPOTrainingConfig, with_reward_model: bool,
             resume_from: int | None) -> dict[str, Any]:
    """The main process's part before training: starting policy, reward model row, prompts snapshot, run row and
    folder (what `share` sends the other processes). Bad input is refused before the row exists."""
    from rl.training import open_policy_run, qlora
    from store.rows import prompt_messages
    from store.runs import get_run
    from training.snapshot import snapshot_rows

    start = resolve_policy(ws.db, config.policy)
    if resume_from is not None:
        old_algo = get_run(ws.db, resume_from).config.get("config", {}).get("algo", "ppo")
        if old_algo != config.algo:
            raise ValueError(f"--resume: run {resume_from} trained with algo {old_algo!r}, not {config.algo!r}")
    reward_row = newest_model(ws.db, "reward", config.reward) if with_reward_model else None
    rows, snapshot = snapshot_rows(ws.db, config, "prompts", resume_from)
    if resume_from is None:
        snapshot.update({"reward_model": reward_row.name if reward_row else "custom", "reward_model_id":
                         reward_row.id if reward_row else None,
                         "reward_round": reward_row.round if reward_row else None})
    qlora(config)  # its errors (no CUDA, no bitsandbytes) come before the row exists
    run_id, run_dir = open_policy_run(ws, RUN_KIND, config, snapshot, start, resume_from, rows)
    return {"start": start, "reward_row": reward_row, "snapshot": snapshot, "run_id": run_id, "run_dir": run_dir,
            "prompts": [prompt_messages(None, m) for m in rows["prompt_messages"]]}


def _train(ws: WorkspaceLike, config: PPOTrainingConfig, prepared: dict[str, Any], reward_fn: RewardFn | None,
           resume_from: int | None, progress: bool, engine: str, state: Any) -> PolicyTrainingResult:
    """Every process: load the policy (and the reward model), train, and on the main process register."""
    from rl.training import qlora
    from store.runs import update_run
    from training.device import activation_values, training_defaults

    start, snapshot, run_id, run_dir = (prepared[k] for k in ("start", "snapshot", "run_id", "run_dir"))
    run_dir = Path(run_dir)
    model, tokenizer = load_causal_lm(start, quantization=qlora(config), device=config.device)
    # checkpointing as the other trainers choose it: from the activations of one update's micro-batch (ours: a
    # minibatch of this process's share, prompt and response at their longest)
    positions = config.minibatch_size // max(state.num_processes, 1) * (config.max_prompt_length
                                                                          + config.max_new_tokens)
    dev = training_defaults(config.device, sum(p.numel() for p in model.parameters()), config.bf16,
                            config.gradient_checkpointing,
                            activation_values(model.config, positions) if config.algo == "ppo" else 0)
    device = dev.device  # several processes: each its own accelerator ('cuda:N'), or all 'cpu'
    if state.num_processes > 1 and state.device.type != "cpu":
        device = str(state.device)
    if reward_fn is None:
        from reward.score import RewardScorer

        reward_fn = RewardScorer.from_row(prepared["reward_row"], device=device).score
    if config.algo == "ppo":
        loop = PPOLoop(config, model, tokenizer, reward_fn, prepared["prompts"], device, dev.bf16, state,
                       dev.gradient_checkpointing)
        if dev.gradient_checkpointing and not loop.checkpointed:  # the run row says what really happened
            import dataclasses

            dev = dataclasses.replace(dev, gradient_checkpointing=False, reasons={
                **dev.reasons, "gradient_checkpointing": "asked for, but the policy has no HF checkpointing layers"})
        return _run(ws, config, loop, start, run_id, run_dir, resume_from, progress, snapshot, dev, state)
    if state.is_main_process:
        update_run(ws.db, run_id, metrics={"device": dev.as_dict()})
    if state.num_processes == 1:
        from rl.rloo_grpo import train_rloo_grpo

        trained, metrics, history = train_rloo_grpo(config, model, tokenizer, reward_fn, prepared["prompts"],
                                                    run_dir, dev, resume_from, progress, engine)
        return _finish(ws, config, trained, tokenizer, start, run_id, run_dir, snapshot, dev, metrics, history)
    from rl.rloo_grpo import run_rloo_grpo
    from rl.training import finish_trainer

    trainer, metrics, history = run_rloo_grpo(config, model, tokenizer, reward_fn, prepared["prompts"], run_dir, dev,
                                              resume_from, progress, engine)
    metrics = _run_metrics(metrics, snapshot, run_dir, history, state)
    name = config.name or f"{config.algo}-run{run_id}"
    result = finish_trainer(ws, trainer, tokenizer, start, run_id, run_dir, name, _rounds(snapshot), metrics,
                            {**metrics, "trainer": config.algo}, state)
    return result if result is not None else PolicyTrainingResult(run_id, None, run_dir, run_dir / "model", {})


def _run(ws: WorkspaceLike, config: PPOTrainingConfig, loop: PPOLoop, start: Any, run_id: int, run_dir: Path,
         resume_from: int | None, progress: bool, snapshot: dict[str, Any], dev: Any,
         state: Any) -> PolicyTrainingResult:
    import torch

    from store.runs import update_run

    if resume_from is not None:
        checkpoint = last_ppo_checkpoint(run_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: run {resume_from} left no checkpoint in {run_dir}")
        loop.load(checkpoint)
    first_step = loop.step
    main = state.is_main_process
    if main:
        update_run(ws.db, run_id, metrics={"device": dev.as_dict(), "resumed_at_step": first_step})
    writer = _tensorboard(config, run_dir / "tensorboard") if main else None

    def log(row: dict[str, float]) -> None:
        if writer is not None and row["step"] % config.logging_steps == 0:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(f"ppo/{key}", value, row["step"])

    started = time.monotonic()
    try:
        history = loop.train(run_dir, log, progress)
    finally:
        if writer is not None:
            writer.close()
    if not main:  # the main process saves, registers and closes the run
        return PolicyTrainingResult(run_id, None, run_dir, run_dir / "model", {})
    seconds = time.monotonic() - started
    ran = history[first_step:]
    spent = {part: sum(r[f"{part}_s"] for r in ran) for part in ("sample", "score", "update")}
    total = max(sum(spent.values()), 1e-9)
    window = history[-5:]
    metrics: dict[str, Any] = {
        "global_step": loop.step, "train_seconds": round(seconds, 1),
        "steps_per_s": round(len(ran) / max(seconds, 1e-9), 4),
        # shares of the PPO steps' time: sampling (generate), scoring (log-probs, values, reward model), the update
        "sampling_share": round(spent["sample"] / total, 3), "scoring_share": round(spent["score"] / total, 3),
        "update_share": round(spent["update"] / total, 3),
        "first_score": history[0]["score"] if history else None,
        "score": sum(r["score"] for r in window) / len(window) if window else None,
        "kl": sum(r["kl"] for r in window) / len(window) if window else None,
        "kl_coef": loop.kl_ctl.value,
    }
    if state.num_processes > 1:
        metrics["distributed"] = {"processes": state.num_processes, "type": str(state.distributed_type.value)}
    torch.save(loop.value_head.state_dict(), run_dir / "value_head.pt")
    return _finish(ws, config, loop.model, loop.tokenizer, start, run_id, run_dir, snapshot, dev, metrics, history)


def _rounds(snapshot: dict[str, Any]) -> list[int]:
    return [snapshot["reward_round"]] if snapshot.get("reward_round") is not None else []


def _run_metrics(metrics: dict[str, Any], snapshot: dict[str, Any], run_dir: Path, history: list[dict[str, float]],
                 state: Any = None) -> dict[str, Any]:
    """The run's metrics with the reward model named; the main process writes the history beside them."""
    metrics = {**metrics, "reward_model": snapshot["reward_model"], "reward_model_id": snapshot["reward_model_id"]}
    if state is None or state.is_main_process:
        (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    return metrics


def _finish(ws: WorkspaceLike, config: PPOTrainingConfig, model: Any, tokenizer: Any, start: Any, run_id: int,
            run_dir: Path, snapshot: dict[str, Any], dev: Any, metrics: dict[str, Any],
            history: list[dict[str, float]]) -> PolicyTrainingResult:
    """Save the merged policy and its history, register it (parent, run, reward model, round), close the run."""
    metrics = _run_metrics(metrics, snapshot, run_dir, history)
    if dev.device.startswith("cuda"):
        import torch

        metrics["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return finish_policy(ws, model, tokenizer, start, run_id, run_dir, config.name or f"{config.algo}-run{run_id}",
                         _rounds(snapshot), metrics, {**metrics, "trainer": config.algo})
