"""What every page shares: the workspace database, the logged-in user, and the admin check.

The app finds its workspace in the environment variable RANKLOOP_WORKSPACE (set by `rankloop serve`). The login
session is a token: in the browser's HttpOnly cookie (annotate.cookies; it survives reloads, new tabs and a server
restart), and in `st.session_state` for the browser session that logged in. It is checked against the database on
every run, so a logout, an expiry or a deactivated account takes effect at the next click.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import streamlit as st

from annotate.cookies import COOKIE, NOTICES, keep_as_cookie, navigate
from store.settings import get_settings
from store.users import User, session_context

WORKSPACE_ENV = "RANKLOOP_WORKSPACE"
_handover = threading.local()  # the router's session check, taken by the page it runs in the same script run
DB_NAME = "rankloop.duckdb"  # the name rankloop.workspace gives the database inside a workspace folder
CONFIG_NAME = "rankloop.toml"


@functools.lru_cache(maxsize=8)
def _opened(root: str) -> Path | str:
    """The workspace's database (a DuckDB file, or a PostgreSQL URL in team mode), opened once per server process:
    a DuckDB file is migrated, a PostgreSQL schema only checked (`rankloop migrate` upgrades it)."""
    from rankloop.workspace import open_workspace

    return open_workspace(root).db


def workspace_dir() -> Path:
    raw = os.environ.get(WORKSPACE_ENV)
    if not raw:
        st.error(f"No workspace: start the app with `rankloop serve --workspace DIR` (or set {WORKSPACE_ENV}).")
        st.stop()
    return Path(raw)


def db_path() -> Path | str:
    """The workspace database, brought up to the current schema (DuckDB) or checked (PostgreSQL) once per server
    process."""
    root = workspace_dir()
    if not (root / CONFIG_NAME).is_file():
        st.error(f"{root}: not a workspace; create one with `rankloop init {root}`.")
        st.stop()
    if not (root / DB_NAME).is_file() and not _team_mode(root):
        st.error(f"{root / DB_NAME}: no workspace database here; create one with `rankloop init {root}`.")
        st.stop()
    return _opened(str(root))


@functools.lru_cache(maxsize=8)
def _team_mode(root: Path) -> bool:
    """Whether rankloop.toml names a PostgreSQL database (read once per process, not at every click)."""
    from rankloop.config import load_config

    return bool(load_config(root / CONFIG_NAME).workspace.database)


def current_user(*, for_page: bool = False) -> User | None:
    """The user of this browser session, or None (the token is dropped when the session ended).

    The router checks the session once per run (with the settings, on one connection) and hands the answer to
    the page it runs (`for_page=True` takes it); a page run without the router checks for itself. The hand-over
    lives in a thread-local of this script run, not in `st.session_state`, so a forged session state can never
    stand in for the database's answer.
    """
    token = st.session_state.get("token") or _cookie_token()
    handed = _handover.__dict__.pop("checked", None) if for_page else None
    if not token:
        _single_sign_on()
        return None
    if handed is not None and handed[0] == token:
        return handed[1]
    user, found = session_context(db_path(), token)
    st.session_state["settings"] = found
    if user is None:
        st.session_state.pop("token", None)
        st.session_state["login_notice"] = NOTICES["ended"]
        if token == _cookie_token():
            navigate("/rankloop/logout?notice=ended")  # clears the dead cookie, then shows the login page
    elif not for_page:
        _handover.checked = (token, user)
    return user


def _single_sign_on() -> None:
    """After `st.login` came back: start the rankloop session its identity names and make it the login cookie."""
    try:
        identity = st.user.to_dict() if st.user.is_logged_in else None
    except Exception:  # no single sign-on configured (no [auth] secrets), or no browser behind this run
        return
    if not identity:
        return
    from annotate.sso import sso_section
    from store.users import sso_login

    claim = sso_section(str(workspace_dir())).account_claim
    result = sso_login(db_path(), str(identity.get(claim) or ""), str(identity.get("sub") or ""))
    if result.token:
        st.session_state["token"] = result.token
        keep_as_cookie(result.token)
    else:
        navigate("/rankloop/logout?notice=no_account")


def _cookie_token() -> str | None:
    try:
        token = st.context.cookies.get(COOKIE)
    except Exception:  # no browser behind this run (AppTest, bare mode): no cookie
        return None
    return token if isinstance(token, str) and token else None


def settings() -> dict:
    """The workspace settings as read with this run's session check."""
    if "settings" not in st.session_state or not st.session_state["settings"]:
        st.session_state["settings"] = get_settings(db_path())
    return st.session_state["settings"]


def require_user() -> User:
    user = current_user(for_page=True)
    if user is None:
        st.warning("Please log in.")
        st.stop()
    return user


def require_admin() -> User:
    """Stop the page unless the user is an admin; every admin page calls this first."""
    user = require_user()
    if user.role != "admin":
        st.error("This page is for admins only.")
        st.stop()
    return user
