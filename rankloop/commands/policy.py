"""`rankloop train dpo|sft|kto|ppo`, `rankloop eval policy` and `rankloop round next`: the policy stage.

Importing this module adds `dpo`, `sft`, `kto` and `ppo` to the shared `train` group and `policy` to the `eval` group
(rankloop/commands/reward.py); `round_group` is the `round` command group. Settings: defaults < `[dpo]`/`[sft]`/
`[kto]`/`[ppo]` in rankloop.toml < `--config FILE` < flags (`--set FIELD=VALUE` for any other field).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rankloop.commands.common import echo_json, guarded, workspace_option
from rankloop.commands.options import config_options, refuse_unused
from rankloop.commands.reward import _overrides, eval_group, train_group
from rankloop.workspace import Workspace
from rl.config import DPOTrainingConfig, KTOTrainingConfig, PolicyEvalConfig, RoundConfig, SFTTrainingConfig
from rl.ppo_config import PPOTrainingConfig


def _common(cls: type, section: str, *names: str) -> Callable:
    """Options every policy trainer takes, then the fields `names` of its config, made from their declarations."""
    options = [
        config_options(cls, "policy", section=section),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"TOML file whose [{section}] section overrides the workspace's."),
        click.option("--resume", default=None, is_flag=False, flag_value="latest", metavar="[RUN]",
                     help="Continue an interrupted run from its last checkpoint (a run id; alone: the newest "
                          "unfinished)."),
        config_options(cls, "max_steps", "name", "learning_rate", "device", *names, section=section),
        click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
                     help=f"Any other field of [{section}], e.g. --set lora_r=8 (repeatable)."),
        click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to TensorBoard)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    return lambda fn: functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


def _run(ws: Workspace, section: str, cls: type, kind: str, train: Callable, config_file: Path | None,
         resume: str | None, assignments: tuple[str, ...], no_progress: bool, as_json: bool,
         options: dict[str, Any], **extra: Any) -> Any:
    from rankloop.models import ensure_default_policy
    from rl.config import load_section
    from rl.training import resume_config

    overrides = guarded(_overrides, options, assignments)
    if resume is not None:
        run = resume if resume == "latest" else guarded(int, resume)
        run_id, config = guarded(resume_config, ws, kind, cls, run, overrides)
    else:
        run_id = None
        config = guarded(load_section, cls, section, ws.config.extra, ws.root / "rankloop.toml", config_file,
                         overrides)
    if section == "ppo":  # an option of our PPO given to RLOO/GRPO (or the reverse) is refused, naming it
        refuse_unused(config, list(overrides), "algo")
    from training.distributed import process_state

    if process_state().is_main_process:  # under accelerate launch the others wait for the main one's run
        guarded(ensure_default_policy, ws, config.policy)
    result = guarded(train, ws, config, resume_from=run_id, progress=not no_progress, **extra)
    if result.model_name is None:  # a process other than the main one under accelerate launch: the main one reports
        click.get_current_context().exit(0)
    if as_json:
        echo_json({"run_id": result.run_id, "model": result.model_name, "model_dir": result.model_dir,
                   "run_dir": result.run_dir, "metrics": result.metrics})
        return result
    click.echo(f"policy {result.model_name!r} (run {result.run_id}): {result.model_dir}")
    return result


@train_group.command("dpo")
@_common(DPOTrainingConfig, "dpo", "max_pairs", "beta", "loss_type", "label_smoothing", "rounds", "edited_first",
         "exclude_flagged", "num_train_epochs")
@workspace_option
def train_dpo_command(ws: Workspace, config_file: Path | None, resume: str | None, assignments: tuple[str, ...],
                      no_progress: bool, as_json: bool, **options: Any) -> None:
    """Steer the policy with DPO (TRL DPOTrainer, LoRA; the reference is the starting policy with the adapters
    off) on the reviewers' preference pairs; held-out preference accuracy drives early stopping."""
    from rl.dpo import RUN_KIND, train_dpo

    result = _run(ws, "dpo", DPOTrainingConfig, RUN_KIND, train_dpo, config_file, resume, assignments, no_progress,
                  as_json, options)
    if not as_json:
        m = result.metrics
        if m.get("eval_accuracy") is not None:
            click.echo(f"held-out preference accuracy {m['eval_accuracy']:.3f} on {m['eval_pairs']} pairs")
        click.echo(f"{m['global_step']} steps in {m['train_seconds']}s ({m['pairs_per_s']} pairs/s)")
        click.echo(f"logs: tensorboard --logdir {result.run_dir / 'tensorboard'}")


@train_group.command("sft")
@_common(SFTTrainingConfig, "sft", "max_pairs", "source", "rounds", "exclude_flagged", "num_train_epochs")
@workspace_option
def train_sft_command(ws: Workspace, config_file: Path | None, resume: str | None, assignments: tuple[str, ...],
                      no_progress: bool, as_json: bool, **options: Any) -> None:
    """Supervised fine-tuning (TRL SFTTrainer, loss on the answer only) on reviewers' edited answers and
    top-ranked responses: the usual first step before preference training."""
    from rl.sft import RUN_KIND, train_sft

    result = _run(ws, "sft", SFTTrainingConfig, RUN_KIND, train_sft, config_file, resume, assignments, no_progress,
                  as_json, options)
    if not as_json:
        m = result.metrics
        loss = f"loss {m['first_loss']:.3f} -> {m['last_loss']:.3f}" if m.get("last_loss") is not None else \
            f"mean loss {m['train_loss']:.3f} (no step logged: logging_steps is larger than the run)"
        click.echo(f"{m['global_step']} steps in {m['train_seconds']}s; {loss}")


@train_group.command("kto")
@_common(KTOTrainingConfig, "kto", "max_pairs", "beta", "desirable_weight", "undesirable_weight", "loss_type",
         "rounds", "num_train_epochs")
@workspace_option
def train_kto_command(ws: Workspace, config_file: Path | None, resume: str | None, assignments: tuple[str, ...],
                      no_progress: bool, as_json: bool, **options: Any) -> None:
    """Steer the policy with KTO (TRL KTOTrainer, LoRA; the reference is the starting policy with the adapters off)
    on thumbs: each ranking's top answers desirable, its bottom answers and every answer judged "all bad"
    undesirable. Needs both kinds of label."""
    from rl.kto import RUN_KIND, train_kto

    result = _run(ws, "kto", KTOTrainingConfig, RUN_KIND, train_kto, config_file, resume, assignments, no_progress,
                  as_json, options)
    if not as_json:
        m = result.metrics
        click.echo(f"{m['desirable']} desirable and {m['undesirable']} undesirable rows (weights "
                   f"{m['desirable_weight']:.3g} / {m['undesirable_weight']:.3g})")
        loss = f"loss {m['first_loss']:.3f} -> {m['last_loss']:.3f}" if m.get("last_loss") is not None else \
            f"mean loss {m['train_loss']:.3f} (no step logged: logging_steps is larger than the run)"
        if m.get("eval_loss") is not None:
            loss += f"; held-out loss {m['eval_loss']:.3f} on {m['eval_rows']} rows"
        click.echo(f"{m['global_step']} steps in {m['train_seconds']}s ({m['rows_per_s']} rows/s); {loss}")
        click.echo(f"logs: tensorboard --logdir {result.run_dir / 'tensorboard'}")


@train_group.command("ppo")
@_common(PPOTrainingConfig, "ppo", "algo", "reward", "target_kl", "max_prompts")
@workspace_option
def train_ppo_command(ws: Workspace, config_file: Path | None, resume: str | None, assignments: tuple[str, ...],
                      no_progress: bool, as_json: bool, **options: Any) -> None:
    """Steer the policy with PPO against a reward model (InstructGPT style: LoRA policy + value head, per-token
    KL penalty to the reference with an adaptive coefficient, GAE, clipped losses), or with TRL's RLOO or GRPO
    (--algo) on the same prompts and reward model."""
    from rl.ppo_run import RUN_KIND, train_ppo

    result = _run(ws, "ppo", PPOTrainingConfig, RUN_KIND, train_ppo, config_file, resume, assignments, no_progress,
                  as_json, options)
    if not as_json:
        m = result.metrics
        line = f"{m['global_step']} iterations in {m['train_seconds']}s"
        if m.get("score") is not None:
            line += f"; reward score {m['first_score']:.3f} -> {m['score']:.3f}"
        if m.get("kl") is not None:
            line += f", KL {m['kl']:.3f}"
        if m.get("scoring_share") is not None:  # our PPO: where each step's time went
            line += (f"; each step {m['sampling_share']:.0%} sampling, {m['scoring_share']:.0%} scoring, "
                     f"{m['update_share']:.0%} updating")
        click.echo(line)


EVAL_FIELDS = ("max_prompts", "k", "max_new_tokens", "temperature", "seed", "samples_shown", "device")


@eval_group.command("policy")
@click.argument("new")
@click.option("--against", required=True, help="The policy to compare with (e.g. the previous version).")
@click.option("--reward", default="", help="Reward model that judges.  [default: the newest]")
@click.option("--reference", default="", help="Policy the KL to the reference is measured against.  "
              "[default: the root of NEW's parent chain, adapters disabled]")
@config_options(PolicyEvalConfig, *EVAL_FIELDS)
@config_options(RoundConfig, "engine", section="generation")  # declared once, in SamplingParams (RoundConfig's base)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@workspace_option
def eval_policy_command(ws: Workspace, new: str, against: str, reward: str, reference: str, as_json: bool,
                        engine: str | None, **options: Any) -> None:
    """Win rate of NEW over --against by the reward model on held-out prompts (95% interval), KL(NEW || AGAINST),
    the KL of each to the reference policy, lengths and a sample table, as report.md + PNG under the eval run's
    folder."""
    from rl.evaluate import evaluate_policy

    config = guarded(PolicyEvalConfig, **{name: value for name, value in options.items() if value is not None})
    result = guarded(evaluate_policy, ws, new, against, reward=reward, reference=reference,
                     engine=engine or ws.config.generation.engine,
                     **{name: getattr(config, name) for name in EVAL_FIELDS})
    if as_json:
        echo_json({"run_id": result.run_id, "report": result.report_dir / "report.md", "metrics": result.metrics})
        return
    m = result.metrics
    click.echo(f"{new} vs {against}: win rate {m['win_rate']:.3f} (95% {m['win_rate_low']:.3f}-"
               f"{m['win_rate_high']:.3f}) over {m['comparisons']} samples; KL {m['kl_new_vs_against']:.3f}")
    click.echo(f"KL to the reference {m['reference']!r}: {new} {m['kl_new_vs_reference']:.3f}, {against} "
               f"{m['kl_against_vs_reference']:.3f} nats per response")
    click.echo(f"report: {result.report_dir / 'report.md'}")


@click.group("round")
def round_group() -> None:
    """Rounds of the loop: queue the newest policy's samples for the reviewers."""


ROUND_FIELDS = ("policy", "k", "prompts", "mix_previous", "max_new_tokens", "temperature", "seed", "split",
                "required_reviewers", "device")  # RoundConfig's fields that `round next` takes


@round_group.command("next")
@config_options(RoundConfig, *ROUND_FIELDS)
@config_options(RoundConfig, "engine", section="generation")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@workspace_option
def round_next_command(ws: Workspace, as_json: bool, **options: Any) -> None:
    """Sample candidates from the newest policy for prompts without comparisons and queue them as the next round,
    recording the lineage (round -> policy -> training run -> reward model -> data snapshot)."""
    from rl.rounds import next_round

    config = guarded(RoundConfig, **{name: value for name, value in options.items() if value is not None})
    result = guarded(next_round, ws, policy=config.policy, k=config.k, n_prompts=config.prompts,
                     mix_previous=config.mix_previous, max_new_tokens=config.max_new_tokens,
                     temperature=config.temperature, seed=config.seed, split=config.split,
                     required_reviewers=config.required_reviewers, device=config.device,
                     engine=options["engine"] or ws.config.generation.engine)
    if as_json:
        echo_json(result.__dict__)
        return
    click.echo(f"round {result.round}: {result.comparisons} comparisons ({result.responses} responses) from "
               f"{result.policy!r}" + (f" mixed with {result.previous!r}" if result.previous else "")
               + f" (run {result.run_id})")
    click.echo(f"  {result.scoring_line}")
