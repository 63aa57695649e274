"""`rankloop users add|list|deactivate|reset`: the accounts that log in to the annotation app."""

from __future__ import annotations

import getpass
import os
import sys

import click

from rankloop.commands.common import guarded, workspace_option
from rankloop.workspace import Workspace
from store.users import add_user, deactivate_user, list_users, reset_user

PASSWORD_ENV = "RANKLOOP_PASSWORD"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def _password(from_stdin: bool) -> str:
    """From stdin (--password-stdin), else $RANKLOOP_PASSWORD, else a hidden prompt asked twice."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


_stdin_option = click.option(
    "--password-stdin", is_flag=True, help=f"Read the password from the first line of stdin (else ${PASSWORD_ENV}, "
    "else a prompt)."
)


@click.group("users")
def users_group() -> None:
    """Accounts for the annotation app: reviewers and admins (no default accounts exist)."""


@users_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["reviewer", "admin"]), default="reviewer", show_default=True,
              help="Admins also see the admin pages.")
@_stdin_option
@workspace_option
def add_command(ws: Workspace, name: str, role: str, password_stdin: bool) -> None:
    """Create account NAME; the password is prompted (or read from stdin / $RANKLOOP_PASSWORD)."""
    rid = guarded(add_user, ws.db, name, role, _password(password_stdin), actor=_actor())
    click.echo(f"added {role} {name} (id {rid}) to {ws.db}")


@users_group.command("list")
@click.option("--all", "include_imported", is_flag=True, help="Also list reviewers that came with imported data.")
@workspace_option
def list_command(ws: Workspace, include_imported: bool) -> None:
    """Accounts with role, state and last login."""
    users = list_users(ws.db, include_imported=include_imported)
    if not users:
        click.echo("no accounts yet: add one with `rankloop users add NAME --role admin`")
    for u in users:
        state = "active" if u.active else "inactive"
        click.echo(f"{u.name:<24} {u.role:<9} {u.kind:<9} {state:<9} last login {u.last_login_at or 'never'}")


@users_group.command("deactivate")
@click.argument("name")
@workspace_option
def deactivate_command(ws: Workspace, name: str) -> None:
    """Stop NAME from logging in and end their open sessions (their judgments stay)."""
    guarded(deactivate_user, ws.db, name, actor=_actor())
    click.echo(f"deactivated {name}")


@users_group.command("reset")
@click.argument("name")
@click.option("--role", type=click.Choice(["reviewer", "admin"]), default=None, help="Also change the role.")
@_stdin_option
@workspace_option
def reset_command(ws: Workspace, name: str, role: str | None, password_stdin: bool) -> None:
    """Give NAME a new password, clear a lockout and reactivate the account."""
    guarded(reset_user, ws.db, name, _password(password_stdin), actor=_actor(), role=role)
    click.echo(f"reset {name}")
