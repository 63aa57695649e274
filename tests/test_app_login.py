"""The app's front door (AppTest): login, wrong password, lockout, logout, roles, and a start without torch.

Login, lockout, deactivation and the every-page start also run on a PostgreSQL workspace (`both_backends`)."""

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from store.audit import list_events
from store.users import add_user, deactivate_user

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "annotate" / "app.py"
PAGES = ROOT / "annotate" / "app_pages"



def app(workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(workspace.root))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    return at


def log_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_pw").input(password)
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest) -> str:
    """Everything the page shows as text, for "is it (not) on the page" checks."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "text", "code", "error", "warning",
                 "info", "success", "toast"):
        parts += [str(e.value) for e in getattr(at, kind, [])]
    return "\n".join(parts)


@pytest.fixture
def accounts(workspace):
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    return workspace


@pytest.mark.both_backends
def test_login_page_then_rank_page(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    assert [t.value for t in at.title] == ["rankloop"]
    log_in(at, "rita", "rita's password")
    assert at.title[0].value == "Rank the answers"
    assert "Your queue is empty" in texts(at)
    assert [e["action"] for e in list_events(accounts.db, actor="rita")] == ["login"]


def test_wrong_password_is_refused_and_logged(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    log_in(at, "rita", "not the password")
    assert at.title[0].value == "rankloop" and "Wrong name or password." in texts(at)
    assert "token" not in at.session_state
    assert [e["action"] for e in list_events(accounts.db, actor="rita")] == ["login.failed"]


@pytest.mark.both_backends
def test_repeated_failures_lock_the_account(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    for _ in range(5):
        log_in(at, "rita", "guess guess")
    log_in(at, "rita", "rita's password")
    assert "Too many failed logins" in texts(at) and at.title[0].value == "rankloop"


def test_logout_ends_the_session(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    log_in(at, "rita", "rita's password")
    token = at.session_state["token"]
    button(at, "Log out").click().run()
    assert at.title[0].value == "rankloop" and "Logged out." in texts(at)
    at.session_state["token"] = token  # a stolen or replayed token no longer works
    at.run()
    assert at.title[0].value == "rankloop"
    assert "logout" in [e["action"] for e in list_events(accounts.db, actor="rita")]


@pytest.mark.both_backends
def test_deactivation_ends_an_open_session(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    log_in(at, "rita", "rita's password")
    deactivate_user(accounts.db, "rita", actor="adam")
    at.run()
    assert at.title[0].value == "rankloop" and "session ended" in texts(at)


def test_reviewer_is_denied_admin_pages(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    log_in(at, "rita", "rita's password")
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(str(PAGES / "overview.py"))  # not in a reviewer's navigation at all
    for page in ("overview", "agreement", "reviewers", "queue", "runs", "export", "audit", "settings"):
        direct = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=60)
        direct.session_state["token"] = at.session_state["token"]
        direct.run()
        assert [e.value for e in direct.error] == ["This page is for admins only."], page
        assert not direct.title, page


def test_admin_sees_admin_pages(accounts, monkeypatch):
    at = app(accounts, monkeypatch)
    log_in(at, "adam", "adam's password")
    at.switch_page(str(PAGES / "overview.py")).run()
    assert at.title[0].value == "Overview" and not at.exception


@pytest.mark.both_backends
def test_the_app_starts_without_torch_or_transformers(accounts):
    code = (
        "import os, sys\n"
        f"os.environ['RANKLOOP_WORKSPACE'] = {str(accounts.root)!r}\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout=60)\n"
        "at.run()\n"
        "at.text_input(key='login_name').input('adam')\n"
        "at.text_input(key='login_pw').input(\"adam's password\")\n"
        "at.button[0].click().run()\n"
        f"for page in ['rank', 'overview', 'queue', 'runs', 'export']:\n"
        f"    at.switch_page({str(PAGES)!r} + '/' + page + '.py').run()\n"
        "    assert not at.exception, at.exception\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
