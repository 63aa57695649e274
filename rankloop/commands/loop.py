"""`rankloop simulate` (simulated reviewers rank the pending comparisons) and `rankloop loop` (the whole loop,
round after round, resumable)."""

from __future__ import annotations

from typing import Any

import click

from rankloop.commands.common import echo_json, guarded, workspace_option
from rankloop.commands.options import config_options, refuse_unused
from rankloop.loop_config import LoopConfig
from rankloop.workspace import Workspace
from rl.config import RoundConfig


@click.command("simulate")
@click.option("--oracle", required=True, help="What the reviewers prefer: length-in-range, has-a-numbered-list, "
              "avoids-words, module:function, model:NAME (a reward model) or a pairs file (pairs:PATH or *.jsonl).")
@click.option("--reviewers", type=int, default=3, show_default=True, help="Simulated reviewers sim-1..sim-N.")
@click.option("--noise", type=float, default=0.0, show_default=True,
              help="gumbel: temperature in oracle-score units (Bradley-Terry); flip: probability of a random ranking.")
@click.option("--noise-model", type=click.Choice(["gumbel", "flip"]), default="gumbel", show_default=True)
@click.option("--spread", type=float, default=0.0, show_default=True,
              help="Per-reviewer disagreement: reviewer i's noise is noise * (1 + spread * u_i), u_i in [-1, 1].")
@click.option("--round", "round_", type=int, default=None, help="Only this round's comparisons.  [default: all]")
@click.option("--prefix", default="sim-", show_default=True, help="Reviewer names: PREFIX1..PREFIXN.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reviewers' noise.")
@click.option("--max-judgments", type=int, default=0, show_default=True, help="Stop after N judgments (0: all).")
@click.option("--calibrate", is_flag=True, help="Rank nothing: fit --noise and --spread so the simulated reviewers "
              "agree with each other and with people as people agree among themselves, on the comparisons two or "
              "more people ranked (--round's, or all); recorded as a run that `loop` reuses.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@workspace_option
def simulate_command(ws: Workspace, oracle: str, reviewers: int, noise: float, noise_model: str, spread: float,
                     round_: int | None, prefix: str, seed: int, max_judgments: int, calibrate: bool,
                     as_json: bool) -> None:
    """Rank the pending comparisons as N simulated reviewers would, through the app's queue (required reviewers
    respected, nobody twice on a comparison); judgments are ordinary rows with source 'simulated'. With
    --calibrate, fit their noise and spread to the people's agreement instead."""
    from rankloop.oracles import resolve_oracle
    from rankloop.simulate import SimulationConfig, simulate_reviewers

    config = guarded(SimulationConfig, oracle, reviewers, noise, noise_model, spread, round_, prefix, seed,
                     max_judgments)
    resolved = guarded(resolve_oracle, oracle, ws.db)
    if calibrate:
        _calibrate(ws, config, resolved, noise, spread, max_judgments, as_json)
        return

    def progress(done: int, total: int) -> None:
        if not as_json and (done % 25 == 0 or done == total):
            click.echo(f"  {done}/{total} judgments", err=True)

    result = guarded(simulate_reviewers, ws, config, oracle=resolved, progress=progress)
    if as_json:
        echo_json(result.__dict__)
        return
    click.echo(f"{result.judgments} judgments by {', '.join(result.reviewers)} (oracle {result.oracle!r}, run "
               f"{result.run_id}) in {result.seconds:.1f}s; {result.comparisons_left} comparisons still incomplete")
    if result.unknown_responses:
        click.echo(f"  {result.unknown_responses} responses were not in the pairs file (scored 0)")


def _calibrate(ws: Workspace, config: Any, resolved: Any, noise: float, spread: float, max_judgments: int,
               as_json: bool) -> None:
    from rankloop.simulate import calibrate

    given = [f for f, v in (("--noise", noise), ("--spread", spread), ("--max-judgments", max_judgments)) if v]
    if given:
        raise click.UsageError(f"--calibrate fits the noise and spread and ranks nothing: drop {', '.join(given)}")
    log = None if as_json else (lambda line: click.echo(line, err=True))
    result = guarded(calibrate, ws, config, oracle=resolved, log=log)
    if as_json:
        echo_json(result.__dict__)
        return
    click.echo(f"calibrated {result.reviewers} simulated reviewers ({result.noise_model}, oracle {result.oracle!r}, "
               f"run {result.run_id}): noise {result.noise:.4g}, spread {result.spread:g}")
    click.echo(f"  on {result.comparisons} comparisons ranked by {result.people} people: people vs people "
               f"{result.human_agreement:.3f}, simulated vs simulated {result.simulated_agreement:.3f}, simulated "
               f"vs people {result.simulated_human_agreement:.3f}; `rankloop loop` uses these unless its flags differ")


def _loop_overrides(options: dict[str, Any], assignments: tuple[str, ...]) -> dict[str, Any]:
    from reward.config import parse_assignment

    out: dict[str, Any] = dict(parse_assignment(a) for a in assignments)
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def _config(ws: Workspace, overrides: dict[str, Any]) -> Any:
    from rankloop.loop import loop_config

    path = ws.root / "rankloop.toml"
    section = ws.config.extra.get("loop", {})
    if not isinstance(section, dict):
        raise ValueError(f"{path}: [loop] must be a table")
    if "policy" not in section:  # the workspace's default policy ([models] policy), as `generate` uses
        section = {**section, "policy": ws.config.models.policy}
    base = loop_config(section, where=f"{path}: [loop] ")
    return loop_config(overrides, base, where="command line: ")


# The [loop] fields with a flag of their own (rankloop/commands/options.py makes the flags from the fields).
LOOP_FIELDS = ("rounds", "algo", "simulate", "policy", "reviewers", "noise", "required_reviewers", "prompts", "k",
               "max_new_tokens", "max_steps", "eval_prompts", "device")


@click.command("loop")
@config_options(LoopConfig, *LOOP_FIELDS, section="loop")
@click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
              help="Any [loop] field, or reward.FIELD / dpo.FIELD / kto.FIELD / ppo.FIELD for the trainers "
                   "(repeatable).")
@click.option("--new", "new", is_flag=True, help="Start a new loop even if an unfinished one could be resumed.")
@config_options(RoundConfig, "engine", section="generation")  # declared once, in rl.config.SamplingParams
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@workspace_option
def loop_command(ws: Workspace, assignments: tuple[str, ...], new: bool, engine: str | None, as_json: bool,
                 **options: Any) -> None:
    """Close the loop N times: sample, wait for reviewers (or simulate them), train a reward model, train the
    policy (DPO or PPO), evaluate; every step a run row. Run it again after a crash and it continues."""
    from dataclasses import replace

    from rankloop.loop import run_loop
    from rl.sampling import check_engine

    if engine is not None:  # this loop's sampling engine: [generation] engine overridden for this process
        ws.config.generation = guarded(replace, ws.config.generation, engine=engine)
    guarded(check_engine, ws.config.generation.engine)  # vLLM missing: said before any run row
    overrides = guarded(_loop_overrides, options, assignments)
    config = guarded(_config, ws, overrides)
    refuse_unused(config, list(overrides), "reviewing", "give --simulate ORACLE")
    result = guarded(run_loop, ws, config, new=new, asked=overrides, pinned=ws.config.extra.get("loop", {}),
                     log=lambda line: click.echo(line, err=True))
    if as_json:
        echo_json({"run_id": result.run_id, "report": result.folder / "report.md", "rounds": result.rounds,
                   "resumed": result.resumed})
        return
    last = result.rounds[-1]
    line = f"loop {result.run_id}: {len(result.rounds)} rounds, final policy {last['policy']!r}"
    if last.get("oracle_win_rate_vs_base") is not None:
        line += (f"; oracle win rate vs round 0 {last['oracle_win_rate_vs_base']:.3f} (95% "
                 f"{last['oracle_win_rate_vs_base_low']:.3f}-{last['oracle_win_rate_vs_base_high']:.3f})")
    click.echo(line)
    click.echo(f"report: {result.folder / 'report.md'}")
