"""`rankloop train reward`, `rankloop eval reward` and `rankloop score`: reward models from the reviewers' pairs.

`train_group` ("train") and `eval_group` ("eval") are shared groups: rankloop/commands/policy.py adds
`train dpo|ppo|sft` and `eval policy` to them. Multi-GPU: `accelerate launch -m rankloop train reward ...` runs
unchanged (one process per GPU; only the main one touches the workspace database).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rankloop.commands.common import echo_json, guarded, workspace_option
from rankloop.commands.options import config_options, field_of, main_flag
from rankloop.workspace import Workspace
from reward.config import RewardTrainingConfig


@click.group("train")
def train_group() -> None:
    """Train models on the workspace's judgments: reward models and policies (SFT, DPO, PPO/RLOO/GRPO)."""


@click.group("eval")
def eval_group() -> None:
    """Evaluate trained models and write a report under their run folder."""


def _newest_reward_model(ws: Workspace, name: str | None) -> str:
    from store.models import newest_model

    return newest_model(ws.db, "reward", name).name


def _overrides(options: dict[str, Any], assignments: tuple[str, ...]) -> dict[str, Any]:
    from reward.config import parse_assignment

    out = dict(parse_assignment(a) for a in assignments)
    for key, value in options.items():
        if value is None or value == ():
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# The [reward] fields with a flag of their own (rankloop/commands/options.py makes the flags from the fields).
_REWARD_FIELDS = ("base", "max_steps", "max_pairs", "name", "loss", "margin", "aggregate", "rounds", "models",
                  "reviewers", "splits", "min_agreement", "edited_first", "exclude_flagged", "num_train_epochs",
                  "learning_rate", "device")


@train_group.command("reward")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file whose [reward] section overrides the workspace's.")
@click.option("--resume", default=None, is_flag=False, flag_value="latest", metavar="[RUN]",
              help="Continue an interrupted run from its last checkpoint (a run id; alone: the newest unfinished).")
@click.option("--full", "full", is_flag=True, default=None,
              help="Fine-tune the whole backbone (TRL) instead of the default probe (--set method=lora: LoRA).")
@config_options(RewardTrainingConfig, *_REWARD_FIELDS, section="reward")
@click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
              help="Any other [reward] field, e.g. --set lora_r=8 --set report_to='[\"wandb\"]' (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to TensorBoard).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@workspace_option
def train_reward_command(ws: Workspace, config_file: Path | None, resume: str | None, assignments: tuple[str, ...],
                         no_progress: bool, as_json: bool, full: bool | None, **options: Any) -> None:
    """Train a Bradley-Terry reward model on the workspace's preference pairs.

    By default a linear probe on SmolLM2-135M-Instruct's frozen middle layer (method probe); --full or --set
    method=lora|auto fine-tunes the backbone with TRL's RewardTrainer. Held-out prompts (no prompt on both
    sides) are measured (and drive early stopping when fine-tuning); the model, its run and its data snapshot
    are recorded in the workspace. Settings: defaults < [reward] in rankloop.toml < --config FILE < flags.
    """
    from rankloop.models import ensure_default_policy
    from reward.config import load_reward_config
    from reward.train import resume_config, train_reward_model

    if full:
        options["method"] = "full"
    overrides = guarded(_overrides, options, assignments)
    if resume is not None:
        run = resume if resume == "latest" else guarded(int, resume)
        run_id, config = guarded(resume_config, ws, run, overrides)
    else:
        run_id = None
        config = guarded(load_reward_config, ws.config.extra, ws.root / "rankloop.toml", config_file, overrides)
    unused = config.unused(list(overrides))
    if unused:
        flags = ", ".join(sorted(main_flag(field_of(type(config), name)) if name in _REWARD_FIELDS
                                 else f"--set {name}" for name in unused))
        raise click.ClickException(
            f"{flags}: method 'probe' (the default) fits a linear reward on frozen features and never reads "
            f"{'this' if len(unused) == 1 else 'these'}; fine-tune with --full (or --set method=lora) to use "
            f"{'it' if len(unused) == 1 else 'them'}, or leave {'it' if len(unused) == 1 else 'them'} out")
    from training.distributed import process_state

    if process_state().is_main_process:  # under accelerate launch the others wait for the main one's run
        guarded(ensure_default_policy, ws, config.base)
    result = guarded(train_reward_model, ws, config, resume_from=run_id, progress=not no_progress)
    if result.model_name is None:  # a non-main process under accelerate launch
        return
    if as_json:
        echo_json({"run_id": result.run_id, "model": result.model_name, "model_dir": result.model_dir,
                   "run_dir": result.run_dir, "metrics": result.metrics})
        return
    m = result.metrics
    click.echo(f"reward model {result.model_name!r} (run {result.run_id}): {result.model_dir}")
    if m.get("eval_accuracy") is not None:
        click.echo(f"held-out accuracy {m['eval_accuracy']:.3f} (95% {m['eval_accuracy_low']:.3f}-"
                   f"{m['eval_accuracy_high']:.3f}) on {m['eval_pairs']} pairs; length baseline (longer wins) "
                   f"{m['eval_length_longer_accuracy']:.3f}")
    if "penalty" in m:  # method probe: no steps, no TensorBoard logs
        cv = m["cv_accuracy"][f"{m['penalty']:g}"]
        click.echo(f"probe on layer {m['probe_layer']} ({m['probe_precision']}): {m['train_pairs']} train pairs "
                   f"embedded and fitted in {m['train_seconds']}s; L2 penalty {m['penalty']:g} (CV accuracy {cv:.3f})")
        return
    click.echo(f"{m['global_step']} steps in {m['train_seconds']}s ({m['pairs_per_s']} pairs/s)"
               + (", stopped early" if m.get("stopped_early") else ""))
    click.echo(f"logs: tensorboard --logdir {result.run_dir / 'tensorboard'}")


@eval_group.command("reward")
@click.argument("model", required=False)
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL(.gz) of {prompt, chosen, rejected} to evaluate on.  [default: the training run's "
                   "held-out prompts]")
@click.option("--max-pairs", type=int, default=0, help="Evaluate on the first N pairs only (0: all).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Texts scored together.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps.  [default: cuda when present]")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@workspace_option
def eval_reward_command(ws: Workspace, model: str | None, pairs_file: Path | None, max_pairs: int, batch_size: int,
                        device: str | None, as_json: bool) -> None:
    """Held-out accuracy (95% interval), per round and per reviewer, calibration and the length baseline of a
    reward model (default: the newest), written as report.md + PNG charts under its run folder."""
    from reward.evaluate import evaluate_reward_model

    name = guarded(_newest_reward_model, ws, model)
    result = guarded(evaluate_reward_model, ws, name, pairs_file=pairs_file, batch_size=batch_size, device=device,
                     max_pairs=max_pairs)
    if as_json:
        echo_json({"run_id": result.run_id, "model": result.model, "report": result.report_dir / "report.md",
                   "overall": result.metrics, "by_round": result.by_round, "by_reviewer": result.by_reviewer})
        return
    m = result.metrics
    click.echo(f"{result.model}: accuracy {m['accuracy']:.3f} (95% {m['accuracy_low']:.3f}-{m['accuracy_high']:.3f}) "
               f"on {m['pairs']} pairs; length baseline: longer wins {m['length_longer_accuracy']:.3f}, "
               f"shorter wins {m['length_shorter_accuracy']:.3f}; ECE {m['ece']:.3f}")
    click.echo(f"report: {result.report_dir / 'report.md'}")


@click.command("score")
@click.option("--model", default=None, help="Reward model to score with.  [default: the newest]")
@click.option("--round", "round_", type=int, default=None,
              help="Every comparison of this round.  [default: the comparisons still pending, of every round]")
@click.option("--all", "all_", is_flag=True, help="Every comparison of every round, complete ones too.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Texts scored together.")
@click.option("--no-priority", is_flag=True, help="Store the scores but leave comparison priorities alone.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps.  [default: cuda when present]")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@workspace_option
def score_command(ws: Workspace, model: str | None, round_: int | None, all_: bool, batch_size: int,
                  no_priority: bool, device: str | None, as_json: bool) -> None:
    """Score the candidates of the comparisons still pending (still needing reviewers; --round R: every comparison
    of round R, --all: every comparison) with a reward model (stored per response and model), and put the
    comparisons the model is least sure of (small score gaps) first in the reviewers' queue."""
    from reward.score import score_responses

    if all_ and round_ is not None:
        raise click.UsageError("--all scores every round; --round R scores every comparison of round R: give one")
    name = guarded(_newest_reward_model, ws, model)
    result = guarded(score_responses, ws, name, round=round_, batch_size=batch_size,
                     set_priority=not no_priority, device=device, pending=round_ is None and not all_)
    if as_json:
        echo_json(result.__dict__)
        return
    what = {"pending": "pending comparisons", "all": "comparisons (all)"}.get(result.scope,
                                                                              f"comparisons of {result.scope}")
    click.echo(f"scored {result.responses} responses of {result.in_scope} {what} with {result.model!r} "
               f"in {result.seconds:.1f}s ({result.responses_per_s:.1f}/s)")
    if not no_priority:
        click.echo(f"set the priority of {result.comparisons} comparisons (least certain first)")
