"""`rankloop serve`: the annotation app (Streamlit) on a workspace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from rankloop.commands.common import workspace_option
from rankloop.workspace import Workspace

APP = Path(__file__).resolve().parents[2] / "annotate" / "web.py"  # st.App: the app + its login-cookie routes


def streamlit_argv(ws: Workspace, host: str, port: int) -> list[str]:
    """The `streamlit run` command line for the app: no telemetry, no file watcher, no browser popping up."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
        "--server.maxUploadSize", "512", "--client.toolbarMode", "minimal",
        "--runner.postScriptGC", "false",  # a full gc.collect() after every click: 40% of the server's time
    ]


def accounts_line(ws: Workspace) -> str:
    """What the workspace's accounts are, true whether or not any exist (rankloop never makes one by itself)."""
    from store.users import list_users

    active = [u for u in list_users(ws.db) if u.active]
    if not active:
        return "no accounts yet (none exist by default): make an admin with `rankloop users add NAME --role admin`"
    admins = sum(u.role == "admin" for u in active)
    counts = f"{admins} admin{'s' * (admins != 1)}, {len(active) - admins} reviewer{'s' * (len(active) - admins != 1)}"
    return f"accounts: {counts} (`rankloop users list`; more with `rankloop users add NAME --role reviewer`)"


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--port", default=8501, show_default=True, type=int, help="Port to listen on.")
@workspace_option
def serve_command(ws: Workspace, host: str, port: int) -> None:
    """Start the annotation app on the workspace: reviewers rank, admins manage the queue."""
    env = {**os.environ, "RANKLOOP_WORKSPACE": str(ws.root), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
           "RANKLOOP_DB_HOLD": "1"}  # keep the database open between clicks (store.db.hold); CLI and jobs still get it
    from annotate.sso import streamlit_secrets

    try:
        streamlit_secrets(ws.root)  # single sign-on, when configured, must be complete before the server starts
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"serving {ws.root} on http://{host}:{port} (Ctrl+C stops)", err=True)
    if ws.on_postgres:  # several servers may serve one PostgreSQL workspace (sticky sessions behind a balancer)
        from store.dialect import redacted

        click.echo(f"database: {redacted(ws.db)}", err=True)
    click.echo(accounts_line(ws), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(sys.executable, streamlit_argv(ws, host, port), env)
