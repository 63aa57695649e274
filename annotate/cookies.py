"""The login cookie: a session survives reloads, new tabs and a server restart until logout or expiry.

Streamlit talks to the browser over a websocket, which cannot set a cookie, so two small HTTP routes do it
(mounted by annotate/web.py through `st.App`):

- `GET /rankloop/session/{code}`: after a password login on the page, the app stores the new session token
  under a one-time code (random, kept in this process for 60 s, used once) and sends the browser here; the route
  swaps the code for the token and sets it as the cookie `rankloop_session` (HttpOnly, SameSite=Strict, Path=/,
  Secure when the request came over HTTPS, Max-Age = the session's absolute limit), then redirects to `/`. The
  token itself never appears in a URL; the database keeps only its sha256 (store.users).
- `GET /rankloop/logout`: ends the cookie's session (store.users.end_session: its leases go back to the queue)
  and clears the cookie, then redirects to `/?notice=...`. A cross-site link cannot log anyone out: a
  SameSite=Strict cookie is not sent with it.

On every script run the page reads the cookie from the websocket's handshake (`st.context.cookies`) and checks
it against the database like any session token (annotate.session.current_user).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

COOKIE = "rankloop_session"
CODE_TTL_S = 60.0
NOTICES = {"logged_out": "Logged out.", "ended": "Your session ended (logged out, expired or deactivated).",
           "no_account": "Single sign-on worked, but no active rankloop account matches it: ask an admin."}
SSO_COOKIE_PREFIX = "_streamlit_user"  # Streamlit's st.login identity cookies (see annotate.sso)
_codes: dict[str, tuple[str, float]] = {}
_lock = threading.Lock()


def hand_over(token: str) -> str:
    """A one-time code that `/rankloop/session/{code}` swaps for `token` within CODE_TTL_S seconds."""
    code = secrets.token_urlsafe(24)
    now = time.monotonic()
    with _lock:
        for stale in [c for c, (_, at) in _codes.items() if now - at > CODE_TTL_S]:
            del _codes[stale]
        _codes[code] = (token, now)
    return code


def keep_as_cookie(token: str) -> None:
    """After a login on the page: send the browser through `/rankloop/session/{code}`, which sets the cookie."""
    navigate(f"/rankloop/session/{hand_over(token)}")


def redeem(code: str) -> str | None:
    """The token handed over under `code`, once; None when unknown, used or older than CODE_TTL_S."""
    with _lock:
        found = _codes.pop(code, None)
    if found is None or time.monotonic() - found[1] > CODE_TTL_S:
        return None
    return found[0]


def _db() -> Path | str:
    from annotate.session import WORKSPACE_ENV, _opened

    return _opened(os.environ[WORKSPACE_ENV])


def _secure(request) -> bool:
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip() == "https"


def _redirect(to: str):
    from starlette.responses import RedirectResponse

    response = RedirectResponse(to, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _session(request):
    from starlette.concurrency import run_in_threadpool

    from store.settings import get_settings

    token = redeem(request.path_params["code"])
    if token is None:
        return _redirect("/?notice=ended")
    max_hours = (await run_in_threadpool(get_settings, _db()))["session_max_hours"]
    response = _redirect("/")
    response.set_cookie(COOKIE, token, max_age=int(max_hours * 3600), path="/", httponly=True,
                        samesite="strict", secure=_secure(request))
    _drop_sso_identity(request, response)  # a single sign-on became this session: one session model from here
    return response


def _drop_sso_identity(request, response) -> None:
    """Delete Streamlit's own identity cookies (st.login's, split in chunks when large)."""
    for name in request.cookies:
        if name.startswith(SSO_COOKIE_PREFIX):
            response.delete_cookie(name, path="/")


async def _logout(request):
    from starlette.concurrency import run_in_threadpool

    from store.users import end_session

    token = request.cookies.get(COOKIE)
    if token:
        await run_in_threadpool(end_session, _db(), token)
    notice = request.query_params.get("notice", "logged_out")
    response = _redirect(f"/?notice={notice if notice in NOTICES else 'logged_out'}")
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    _drop_sso_identity(request, response)
    return response


def routes() -> list:
    from starlette.routing import Route

    return [Route("/rankloop/session/{code}", _session, methods=["GET"]),
            Route("/rankloop/logout", _logout, methods=["GET"])]


def navigate(url: str) -> None:
    """Send this browser session to `url` (a full page load), the way `st.login` does; no-op outside a server.

    Uses Streamlit's AuthRedirect message (an internal, like scripts/app_client.py's protocol use).
    """
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None:
        return
    msg = ForwardMsg()
    msg.auth_redirect.url = url
    ctx.enqueue(msg)
