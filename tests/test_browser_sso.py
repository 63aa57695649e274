"""Single sign-on through Streamlit's st.login against a local OpenID Connect provider, in chromium.

An identity whose email is a rankloop account logs in with that account's role and gets the ordinary session
cookie (Streamlit's own identity cookie is dropped); an identity with no account gets no access; a configured
provider without its client secret stops `serve` with a message naming the variable.
"""

import duckdb
import pytest

from rankloop.config import load_config, render_config
from scripts.app_client import free_port, start_server, stop_server
from store.users import add_user
from tests.test_browser import CHROME_ARGS, CHROMIUM, SETTLED
from tests.test_queue import seed_comparisons

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
authlib = pytest.importorskip("authlib")


def _configure(ws, provider, port):
    cfg = load_config(ws.root / "rankloop.toml")
    cfg.sso.provider_url = provider.discovery_url
    cfg.sso.client_id = "rankloop-test"
    cfg.sso.redirect_uri = f"http://127.0.0.1:{port}/oauth2callback"
    (ws.root / "rankloop.toml").write_text(render_config(cfg))


def test_single_sign_on_maps_to_an_account_or_refuses(workspace):
    from playwright.sync_api import sync_playwright

    from tests.oidc_provider import Provider

    seed_comparisons(workspace.db, 1, k=2)
    add_user(workspace.db, "rita@example.com", "reviewer", "a password nobody types", actor="test")
    port = free_port()
    with Provider("rankloop-test", "s3cret") as provider:
        _configure(workspace, provider, port)
        proc, url = start_server(workspace.root, port=port, log=workspace.root / "serve.log",
                                 env={"RANKLOOP_SSO_CLIENT_SECRET": "s3cret"})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
                for email, expect in (("rita@example.com", "Prompt · item"),
                                      ("nobody@example.com", "no active rankloop account")):
                    provider.user = {"sub": f"sub-{email}", "email": email, "name": email.split("@")[0]}
                    context = browser.new_context()
                    page = context.new_page()
                    page.goto(url)
                    page.get_by_role("button", name="Log in with single sign-on").click()
                    page.get_by_text(expect).first.wait_for(timeout=30_000)
                    page.wait_for_function(SETTLED, timeout=30_000)
                    names = {c["name"] for c in context.cookies()}
                    assert not any(n.startswith("_streamlit_user") for n in names), names
                    assert ("rankloop_session" in names) == (email == "rita@example.com")
                    if email == "rita@example.com":
                        page.reload()  # an ordinary rankloop session now: a reload keeps it
                        page.get_by_text("Logged in as").first.wait_for(timeout=30_000)
                    context.close()
                browser.close()
        finally:
            stop_server(proc)
    con = duckdb.connect(str(workspace.db))
    events = con.execute(
        "SELECT actor, action, details FROM audit_log WHERE action LIKE 'login%' ORDER BY id").fetchall()
    con.close()
    assert [(a, b) for a, b, _ in events] == [("rita@example.com", "login"), ("nobody@example.com", "login.failed")]
    assert '"via": "sso"' in events[0][2] and provider.token_requests == 2


def test_a_provider_without_its_client_secret_stops_serve_naming_it(workspace, monkeypatch):
    from tests.oidc_provider import Provider

    monkeypatch.delenv("RANKLOOP_SSO_CLIENT_SECRET", raising=False)
    with Provider("rankloop-test", "s3cret") as provider:
        _configure(workspace, provider, free_port())
        with pytest.raises(RuntimeError):
            start_server(workspace.root, log=workspace.root / "serve.log")
    assert "RANKLOOP_SSO_CLIENT_SECRET" in (workspace.root / "serve.log").read_text()
