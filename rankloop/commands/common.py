"""What every command shares: the `--workspace` option and turning known errors into a message and exit code 1."""

from __future__ import annotations

import functools
import getpass
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rankloop.config import ConfigError
from rankloop.workspace import NotAWorkspace, SchemaBehind, Workspace, open_workspace
from store.db import WorkspaceBusy
from store.errors import InputError
from store.models import UnknownModel

# Errors whose message is the whole story: printed without a traceback, exit code 1.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    InputError, ConfigError, NotAWorkspace, WorkspaceBusy, UnknownModel, FileNotFoundError, NotADirectoryError,
    ValueError, FileExistsError, SchemaBehind, ConnectionError, PermissionError,
)


def workspace_option(fn: Callable) -> Callable:
    """Adds `--workspace DIR` (default: the current folder, or $RANKLOOP_WORKSPACE) and passes `ws: Workspace`."""

    @click.option(
        "--workspace", "-w", "workspace_dir", type=click.Path(file_okay=False, path_type=Path),
        default=lambda: os.environ.get("RANKLOOP_WORKSPACE", "."), show_default="current folder",
        help="Workspace folder (made by `rankloop init`).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, workspace_dir: Path, **kwargs: Any) -> Any:
        ws = guarded(open_workspace, workspace_dir)
        return guarded(fn, *args, ws=ws, **kwargs)

    return wrapper


def guarded(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call `fn`; an expected error becomes `Error: ...` on stderr and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except EXPECTED_ERRORS as e:
        raise click.ClickException(str(e)) from e


def cli_actor() -> str:
    """Who the audit log names for a command-line action: `cli:` and the login name."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def audit(ws: Workspace, action: str, details: dict[str, Any]) -> None:
    """Record a command-line admin action (import, export, model added) in the workspace's audit log."""
    from store.audit import record_event

    record_event(ws.db, cli_actor(), action, details)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


__all__ = ["Workspace", "workspace_option", "guarded", "echo_json", "cli_actor", "audit"]
