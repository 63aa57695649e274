"""Optional single sign-on: Streamlit's own `st.login` (OpenID Connect), mapped to a rankloop account.

Configured in the workspace's `rankloop.toml` `[sso]` (rankloop.config.SsoSection); the client secret comes from
$RANKLOOP_SSO_CLIENT_SECRET and the secret that signs Streamlit's identity cookie from
$RANKLOOP_SSO_COOKIE_SECRET, else a random one kept in the workspace folder (`.sso-cookie-secret`, mode 0600).

The flow: the login page's button calls `st.login()`; the provider sends the browser back to `/oauth2callback`,
where Streamlit sets its identity cookie. On the next run the identity's `account_claim` (default: email) names
the rankloop account (store.users.sso_login: no active account, no access; the account's role applies), a
rankloop session starts and becomes the login cookie (annotate.cookies), and Streamlit's identity cookie is
dropped there: from then on the session is an ordinary rankloop session, with its idle and absolute limits,
one audit row per login, and logout.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import secrets
from pathlib import Path

CLIENT_SECRET_ENV = "RANKLOOP_SSO_CLIENT_SECRET"
COOKIE_SECRET_ENV = "RANKLOOP_SSO_COOKIE_SECRET"
COOKIE_SECRET_FILE = ".sso-cookie-secret"


@functools.cache
def sso_section(ws_root: str | Path):
    """The workspace's `[sso]` section when single sign-on is configured, else None (read once per process: the
    server reads its secrets at start too, so a change needs a restart either way)."""
    from rankloop.config import load_config

    cfg = load_config(Path(ws_root) / "rankloop.toml").sso
    return cfg if cfg.provider_url else None


def _cookie_secret(ws_root: Path) -> str:
    if os.environ.get(COOKIE_SECRET_ENV):
        return os.environ[COOKIE_SECRET_ENV]
    path = ws_root / COOKIE_SECRET_FILE
    if not path.exists():  # written whole under another name, then linked: two servers starting at once (team
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # mode) agree on one secret, never read a half file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def streamlit_secrets(ws_root: Path) -> dict | None:
    """The `[auth]` secrets `st.App` needs for `st.login`, or None without single sign-on.

    Raises ValueError naming the variable when the provider is configured but the client secret is not set.
    """
    sso = sso_section(str(ws_root))
    if sso is None:
        return None
    if importlib.util.find_spec("authlib") is None:
        raise ValueError(f"{ws_root / 'rankloop.toml'}: [sso] provider_url is set but Authlib is not installed: "
                         "pip install 'rankloop[sso]'")
    client_secret = os.environ.get(CLIENT_SECRET_ENV)
    if not client_secret:
        raise ValueError(f"{ws_root / 'rankloop.toml'}: [sso] provider_url is set but ${CLIENT_SECRET_ENV} is not: "
                         "set it to the client secret the provider gave this app")
    return {"auth": {"redirect_uri": sso.redirect_uri, "cookie_secret": _cookie_secret(ws_root),
                     "client_id": sso.client_id, "client_secret": client_secret,
                     "server_metadata_url": sso.provider_url}}
