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
    ]


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--port", default=8501, show_default=True, type=int, help="Port to listen on.")
@workspace_option
def serve_command(ws: Workspace, host: str, port: int) -> None:
    """Start the annotation app on the workspace: reviewers rank, admins manage the queue."""
    env = {**os.environ, "RANKLOOP_WORKSPACE": str(ws.root), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    click.echo(f"serving {ws.root} on http://{host}:{port} (Ctrl+C stops)", err=True)
    click.echo("accounts: `rankloop users add NAME --role admin` (there are no default accounts)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(sys.executable, streamlit_argv(ws, host, port), env)
