"""`rankloop export pairs|kto|sft --out FILE`: TRL training rows from the workspace's judgments, with a manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rankloop.commands.common import audit, guarded, workspace_option
from rankloop.commands.options import click_option
from rankloop.workspace import Workspace
from store.export import STYLES, export
from store.pairs import PairFilter
from training.config import DataSelection, default_of

# Data-selection settings declared once in training.config.DataSelection (the train commands read them too).
_SELECTION = ("edited_first", "exclude_flagged")


def _common_options(fn: Callable) -> Callable:
    options = [
        click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Output file: .jsonl or .parquet. The manifest goes beside it as FILE.manifest.json."),
        click.option("--round", "rounds", type=int, multiple=True,
                     help="Only comparisons of this round (repeatable)."),
        click.option("--model", "models", multiple=True,
                     help="Only rows where a response was written by this model (name; repeatable)."),
        click.option("--reviewer", "reviewers", multiple=True, help="Only this reviewer's judgments (repeatable)."),
        click.option("--split", "splits", multiple=True, help="Only prompts of this split, e.g. train (repeatable)."),
        click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
                     help="Drop rows that fewer than this share of the reviewers agree with (0..1)."),
        click.option("--style", type=click.Choice(STYLES), default="standard", show_default=True,
                     help="standard: prompt as text; conversational: chat messages; implicit: prompt inside the "
                          "answers."),
        click.option("--aggregate/--per-reviewer", default=False, show_default=True,
                     help="One row per majority decision over reviewers, or one row per reviewer's judgment."),
        *(click_option(DataSelection, name) for name in _SELECTION),
        click.option("--with-meta", is_flag=True,
                     help="Add where each row came from: reviewer, comparison, judgment, round (or agreement)."),
        click.option("--overwrite", is_flag=True, help="Replace FILE and its manifest if they exist."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run(ws: Workspace, kind: str, out: Path, rounds: tuple[int, ...], models: tuple[str, ...],
         reviewers: tuple[str, ...], splits: tuple[str, ...], min_agreement: float | None, **kwargs: Any) -> None:
    given = {name: kwargs.pop(name) for name in _SELECTION}  # None: not given, the declared default applies
    selection = {name: default_of(DataSelection, name) if v is None else v for name, v in given.items()}
    filters = guarded(PairFilter, round=rounds or None, model=models or None, reviewer=reviewers or None,
                      split=splits or None, min_agreement=min_agreement, **selection)
    manifest = guarded(export, ws.db, kind, out, filters=filters, **kwargs)
    audit(ws, f"export.{kind}", {"file": str(Path(out).resolve()), "filters": filters.as_dict(),
                                 "counts": manifest["counts"], "sha256": manifest.get("sha256")})
    counts = manifest["counts"]
    click.echo(f"wrote {counts['rows']} {kind} rows to {out}")
    click.echo(f"manifest: {out.with_name(out.name + '.manifest.json')}")
    click.echo(f"from {counts['judgments']} judgments by {counts['reviewers']} reviewers "
               f"on {counts['comparisons']} comparisons")
    left = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts["left_out"].items() if v)
    if left:
        click.echo(f"left out: {left}")
    if filters.excluded_reviewers:
        click.echo(f"flagged reviewers left out: {', '.join(filters.excluded_reviewers)}")
    if counts["rows"] == 0:
        click.echo("note: no rows matched; check the filters", err=True)


@click.group("export")
def export_group() -> None:
    """Export judgments as TRL training rows: preference pairs, KTO labels or SFT targets."""


@export_group.command("pairs")
@_common_options
@click.option("--margin/--no-margin", "with_margin", default=True, show_default=True,
              help="Add a `margin` column: how many rank groups apart the two responses were.")
@workspace_option
def pairs_command(ws: Workspace, **kwargs: Any) -> None:
    """Preference pairs {prompt, chosen, rejected, margin} for reward modelling and DPO; ties give no pair."""
    _run(ws, "pairs", **kwargs)


@export_group.command("kto")
@_common_options
@workspace_option
def kto_command(ws: Workspace, **kwargs: Any) -> None:
    """Unpaired rows {prompt, completion, label} for KTO: the top group desirable, the bottom and "all bad" not."""
    _run(ws, "kto", **kwargs)


@export_group.command("sft")
@_common_options
@click.option("--source", "sft_source", type=click.Choice(["edits", "top", "both"]), default="both",
              show_default=True, help="Reviewers' edited answers, top-ranked responses, or both.")
@workspace_option
def sft_command(ws: Workspace, **kwargs: Any) -> None:
    """Supervised rows {prompt, completion} (or {messages}) from reviewers' edits and top-ranked responses."""
    _run(ws, "sft", **kwargs)
