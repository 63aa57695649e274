"""`rankloop init` and `rankloop status`."""

from __future__ import annotations

from pathlib import Path

import click

from rankloop.commands.common import echo_json, guarded, workspace_option
from rankloop.workspace import Workspace, init_workspace, migrate_workspace
from store.dialect import redacted
from store.status import workspace_status


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--encrypt", is_flag=True,
              help="Encrypt the new database (DuckDB AES-GCM) with the key in $RANKLOOP_KEY or the file "
                   "$RANKLOOP_KEY_FILE names; the key is never written to the workspace.")
@click.option("--database", metavar="URL", default=None,
              help="Team mode: keep the tables in this PostgreSQL database (postgresql://USER@HOST:PORT/DBNAME, "
                   "sslmode and other libpq options in the query) instead of rankloop.duckdb. No password in the "
                   "URL: libpq reads PGPASSWORD, PGPASSFILE or ~/.pgpass.")
def init_command(directory: Path, encrypt: bool, database: str | None) -> None:
    """Create a workspace in DIRECTORY: rankloop.toml, rankloop.duckdb (or the tables in --database) and runs/
    (existing ones are kept)."""
    ws = guarded(init_workspace, directory, encrypt=encrypt, database=database)
    click.echo(f"workspace ready: {ws.root}" + (" (database encrypted)" if ws.config.workspace.encrypted else ""))
    click.echo(f"  config:   {ws.root / 'rankloop.toml'}")
    click.echo(f"  database: {redacted(ws.db)}")
    click.echo(f"  runs:     {ws.runs_dir}")


@click.command("migrate")
@click.argument("directory", type=click.Path(path_type=Path), default=".")
def migrate_command(directory: Path) -> None:
    """Bring DIRECTORY's database schema up to date. On PostgreSQL, run it as the role that owns the schema after
    upgrading rankloop: servers and jobs check the version and refuse an older one instead of migrating."""
    ws, done = guarded(migrate_workspace, directory)
    click.echo(f"{redacted(ws.db)}: " + (f"applied {', '.join(done)}" if done else "already up to date"))


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
@workspace_option
def status_command(ws: Workspace, as_json: bool) -> None:
    """Prompts, responses, comparisons pending/complete, judgments per round, and models."""
    s = workspace_status(ws.db)
    s["workspace"] = str(ws.root)
    if as_json:
        echo_json(s)
        return
    click.echo(f"workspace {ws.root} (schema v{s['schema_version']})")
    splits = ", ".join(f"{k} {v}" for k, v in s["prompts_by_split"].items())
    click.echo(f"prompts      {s['prompts']}" + (f" ({splits})" if splits else ""))
    click.echo(f"responses    {s['responses']}")
    click.echo(f"comparisons  {s['comparisons']} ({s['comparisons_pending']} pending, "
               f"{s['comparisons_complete']} complete)")
    click.echo(f"judgments    {s['judgments']} by {s['reviewers_with_judgments']} reviewers "
               f"({s['reviewers']} accounts and sources)")
    for rnd, r in s["rounds"].items():
        click.echo(f"  round {rnd}: {r['comparisons_pending']} pending, {r['comparisons_complete']} complete, "
                   f"{r.get('judgments', 0)} judgments")
    click.echo(f"models       {len(s['models'])}")
    for m in s["models"]:
        click.echo(f"  {m['name']} ({m['kind']}" + (f", round {m['round']}" if m["round"] is not None else "") + ")")
    click.echo(f"runs         {s['runs']}")
