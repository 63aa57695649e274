"""`rankloop generate`: sample k candidates per prompt from a policy and queue them as comparisons."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import click

from rankloop.commands.common import echo_json, guarded, workspace_option
from rankloop.commands.options import config_options
from rankloop.workspace import Workspace
from rl.config import SamplingParams


def _policy_row(ws: Workspace, name: str, quiet: bool = False):
    from rankloop.models import ensure_default_policy, model_location
    from store.models import get_model

    ensure_default_policy(ws, name, None if quiet else lambda line: click.echo(line, err=True))
    row = get_model(ws.db, name)
    model_location(row)  # a missing folder fails here, before any work
    return row


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars: noise here, and not this command's progress."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@click.command("generate")
@click.option("--policy", default=None, help="Model row to sample from.  [default: [models] policy in rankloop.toml]")
@click.option("--prompts", "n_prompts", type=int, default=16, show_default=True,
              help="How many prompts without a comparison to sample for.")
@click.option("--round", "round_", type=int, default=0, show_default=True, help="Round the comparisons belong to.")
@click.option("--required-reviewers", type=int, default=None,
              help="Reviewers each comparison needs.  [default: [workspace] required_reviewers]")
@config_options(SamplingParams, "k", "max_new_tokens", "temperature", "top_p", "batch_size", "seed", "engine",
                section="generation")
@click.option("--split", default=None, help="Only prompts of this split (train, eval, ...).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps.  [default: cuda when present]")
@click.option("--json", "as_json", is_flag=True, help="Print the counts and timings as JSON.")
@workspace_option
def generate_command(ws: Workspace, policy: str | None, n_prompts: int, k: int | None, round_: int,
                     required_reviewers: int | None, max_new_tokens: int | None, temperature: float | None,
                     top_p: float | None, batch_size: int | None, seed: int | None, engine: str | None,
                     split: str | None, device: str | None, as_json: bool) -> None:
    """Sample k responses for each prompt that has no comparison yet and queue one comparison per prompt."""
    from rl.sampling import SamplingProgress, generate_candidates

    overrides = {"k": k, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                 "batch_size": batch_size, "seed": seed, "engine": engine}
    values = {**asdict(ws.config.generation), **{n: v for n, v in overrides.items() if v is not None}}
    params = guarded(SamplingParams, **values)
    from rl.sampling import check_engine

    guarded(check_engine, params.engine)  # before the default policy is converted or anything is written
    name = policy or ws.config.models.policy
    with _quiet_transformers():
        row = guarded(_policy_row, ws, name, as_json)
    reviewers = ws.config.workspace.required_reviewers if required_reviewers is None else required_reviewers

    def progress(at: SamplingProgress) -> None:
        if as_json:
            return
        # `N/M [...]`: the form the Runs page reads a job's progress from (rankloop.jobs.read_log).
        if not at.prompts_done:
            detail = f"model loaded in {at.load_s:.1f}s on {at.device}"
        else:
            detail = (f"{at.comparisons} comparisons queued, {at.tokens_per_s:.1f} tokens/s, "
                      f"{at.finished} ended with EOS")
        click.echo(f"  answers written: {at.answers_written}/{at.answers_total} [{detail}]", err=True)

    if not as_json:
        click.echo(f"sampling {params.k} candidates for up to {n_prompts} prompts from {row.name!r} ...", err=True)
    with _quiet_transformers():
        result = guarded(generate_candidates, ws.db, row, n_prompts=n_prompts, params=params, round=round_,
                         split=split, required_reviewers=reviewers, device=device, progress=progress)
    if as_json:
        echo_json({**result.as_dict(), "policy": row.name, "round": round_, "workspace": str(ws.root)})
        return
    if result.prompts == 0:
        click.echo("no prompts without a comparison" + (f" in split {split!r}" if split else "")
                   + ": nothing sampled (import prompts with `rankloop import`)")
        return
    click.echo(f"queued {result.comparisons} comparisons ({result.responses} responses) for round {round_} "
               f"in {ws.db}")
    click.echo(f"  {result.new_tokens} tokens in {result.generate_s:.1f}s ({result.tokens_per_s:.0f} tokens/s) "
               f"on {result.device}; model loaded in {result.load_s:.1f}s; "
               f"{result.finished}/{result.responses} ended with EOS")
    if result.skipped:
        click.echo(f"  {result.skipped} prompts were queued by another job meanwhile and were left as they were")
