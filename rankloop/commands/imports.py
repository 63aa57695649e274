"""`rankloop import prompts|pairs FILE`: load a file into the workspace, all or nothing."""

from __future__ import annotations

from pathlib import Path

import click

from rankloop.commands.common import Workspace, audit, workspace_option
from store.formats import FORMATS
from store.imports import import_pairs, import_prompts

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.group("import")
def import_group() -> None:
    """Import prompts or ranked pairs. A bad file is refused whole, with its file, line and field named."""


@import_group.command("prompts")
@click.argument("file", type=_FILE)
@click.option("--source", help="Source name stored with each prompt (default: the file's, else its name).")
@click.option("--split", help="Split for every prompt, e.g. train or eval (default: the file's, else train).")
@workspace_option
def prompts_command(ws: Workspace, file: Path, source: str | None, split: str | None) -> None:
    """Import prompts from FILE: JSONL, CSV, Parquet or plain text (one per line); .gz allowed."""
    r = import_prompts(ws.db, file, source=source, split=split)
    audit(ws, "import.prompts", {"file": str(file), **r})
    click.echo(f"{file}: {r['prompts_added']} prompts added, {r['prompts_already_present']} already present "
               f"(of {r['prompts_read']} read)")


@import_group.command("pairs")
@click.argument("file", type=_FILE)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Format of FILE (default: detected from its first record).")
@click.option("--source", help="Source name for the rows, and reviewer name (or prefix) of their judgments.")
@workspace_option
def pairs_command(ws: Workspace, file: Path, fmt: str | None, source: str | None) -> None:
    """Import ranked pairs from FILE (TRL, HH-RLHF, OpenAssistant, Label Studio, Argilla or Arena export)."""
    r = import_pairs(ws.db, file, fmt=fmt, source=source)
    audit(ws, "import.pairs", {"file": str(file), **r})
    click.echo(
        f"{file} ({r['format']}): {r['comparisons']} comparisons, {r['responses']} responses, "
        f"{r['judgments']} judgments added; prompts: {r['prompts_added']} new, {r['prompts_reused']} already "
        f"present; reviewers: {r['reviewers_added']} new"
    )
    for reason, n in r["skipped"].items():
        click.echo(f"  left out: {n} {reason}")
