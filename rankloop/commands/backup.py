"""`rankloop backup DEST` and `rankloop restore SRC DIR`: a consistent copy while the app serves, and its return."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from rankloop.backup import backup_workspace, restore_workspace
from rankloop.commands.common import guarded, workspace_option
from rankloop.workspace import Workspace
from store.dialect import redacted


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--with-runs", is_flag=True, help="Also copy runs/ (checkpoints, adapters, logs); it can be large.")
@workspace_option
def backup_command(ws: Workspace, dest: Path, with_runs: bool) -> None:
    """Copy the workspace to the new folder DEST while the app keeps serving: database (consistent as of one
    instant; a DuckDB file whatever the workspace's backend), rankloop.toml and backup.json (counts and per-table
    hashes); runs/ with --with-runs."""
    manifest = guarded(backup_workspace, ws, dest, with_runs=with_runs, actor=_actor())
    t = manifest["tables"]
    click.echo(f"backup written: {Path(dest).resolve()}")
    click.echo(f"  schema v{manifest['schema_version']}, {t.get('judgments', 0)} judgments, "
               f"{t.get('comparisons', 0)} comparisons, {t.get('prompts', 0)} prompts"
               + (", encrypted" if manifest["encrypted"] else "") + (", with runs/" if with_runs else "")
               + (f", from {manifest['source_database']}" if manifest.get("source_database") else ""))


@click.command("restore")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace DIR even when it is not empty (an existing workspace); with "
              "--database, also empty a database that holds rows (TRUNCATE) before the restore.")
@click.option("--database", default=None, metavar="URL",
              help="Restore into this PostgreSQL database (postgresql://USER@HOST:PORT/DBNAME, empty or freshly "
                   "migrated; no password in the URL) in one transaction; DIR becomes a workspace on it.")
def restore_command(src: Path, directory: Path, force: bool, database: str | None) -> None:
    """Check the backup SRC (it opens, schema version, every block reads, sha256, table hashes) and make DIR a
    workspace holding it: a DuckDB file, or with --database the PostgreSQL database URL (counts and table hashes
    checked again there before the commit). A non-empty DIR or database is replaced only with --force."""
    info = guarded(restore_workspace, src, directory, force=force, database=database)
    where = f" in {redacted(database)}" if database else ""
    click.echo(f"restored {Path(src).resolve()} to {Path(directory).resolve()}{where} "
               f"(schema v{info['schema_version']}, {info['tables'].get('judgments', 0)} judgments)")
