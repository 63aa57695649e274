"""Every shortcut as a real key in chromium, a reload and a server restart, the login cookie (real `rankloop serve`).

A reviewer changes their mind on four answers and on two, uses every key (digits, T, X, S, U, Backspace, Enter),
reloads, and sees the server restarted under them: they stay logged in, on the same item, with the same draft. The
stored rankings are read back from the database. The session lives in an HttpOnly, SameSite=Strict cookie that
scripts cannot read, never in the URL; one login is one audit row; logout clears the cookie and gives the item back.
"""

import hashlib
import json
import urllib.request

import pytest

from scripts.app_client import start_server, stop_server
from store.db import read
from store.users import add_user, deactivate_user
from tests.test_browser import (
    ARTIFACTS,
    CHROME_ARGS,
    CHROMIUM,
    SETTLED,
    choose,
    explained,
    keys_ready,
    log_in_page,
)
from tests.test_queue import seed_comparisons

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")


def _rows(db, sql, params=()):
    """Read while the server may hold the file: store.db waits for it (and asks the server to give it up)."""
    return read(db, lambda con: con.execute(sql, list(params)).fetchall())


class Server:
    """`rankloop serve` on one port, restartable (stopped by its own PID)."""

    def __init__(self, ws):
        self.ws = ws
        self.proc, self.url = start_server(ws.root, log=ws.root / "serve.log")
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def restart(self):
        stop_server(self.proc)
        self.proc, _ = start_server(self.ws.root, port=self.port, log=self.ws.root / "serve.log")

    def stop(self):
        stop_server(self.proc)


@pytest.fixture
def server(workspace):
    s = Server(workspace)
    yield s
    s.stop()


def test_every_key_reload_and_restart_keep_the_draft(workspace, server):
    from playwright.sync_api import sync_playwright

    (four,) = seed_comparisons(workspace.db, 1, k=4)
    two = seed_comparisons(workspace.db, 2, k=2, round=1)
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 900})
        page = context.new_page()
        log_in_page(page, server.url, "rita", "rita's password")

        def see(text: str) -> None:
            page.get_by_text(text, exact=False).first.wait_for(timeout=30_000)
            page.wait_for_function(SETTLED, timeout=30_000)

        def key(k: str, then: str) -> None:
            page.keyboard.press(k)
            see(then)

        with explained(page, workspace.root / "serve.log"):
            # Four answers: rank, change one's mind, clear, all bad, rank again.
            see(f"item {four}")
            lease = keys_ready(page, None)
            assert page.url.rstrip("/") == server.url.rstrip("/")  # nothing in the URL
            key("1", "A · not ranked yet: B, C, D")
            key("2", "A > B · not ranked yet: C, D")
            key("3", "A > B > C > D")  # D, the last one left, takes rank 4
            key("2", "A > C > D > B")  # B again: to the end
            key("2", "A > C > D > B")  # and again: still all ranked, nothing stuck
            page.screenshot(path=str(ARTIFACTS / "rank_four_1366x900.png"))
            key("Backspace", "not ranked yet: A, B, C, D")
            key("X", "all bad / cannot rank")
            key("4", "D · not ranked yet: A, B, C")  # a number after X: the last press wins
            key("3", "D > C · not ranked yet: A, B")
            key("T", "Tie armed")
            key("1", "D > A = C > B")
            page.reload()  # the draft is kept with the lease
            see("D > A = C > B")
            server.restart()
            page.reload()
            see("D > A = C > B")  # still logged in, same item, same draft
            assert keys_ready(page, None) == lease  # the same lease, heard by the new page
            key("Enter", f"item {two[0]}")
            lease = keys_ready(page, lease)

            # Two answers: 1 twice is A better; then B, tie, both bad, clear; Enter stores the last choice.
            choose(page, "1", "A better")
            choose(page, "1", "A better")
            for k, label in (("2", "B better"), ("T", "Tie"), ("X", "Both bad")):
                choose(page, k, label)
            choose(page, "Backspace", "not chosen yet")
            choose(page, "1", "A better")
            page.screenshot(path=str(ARTIFACTS / "rank_two_1366x900.png"))
            key("Enter", f"item {two[1]}")
            lease = keys_ready(page, lease)
            key("S", "Skipped")  # skip, then undo the skip and answer it
            lease = keys_ready(page, lease, item=False)  # the queue is empty: undo is the one key heard
            key("U", f"item {two[1]}")
            lease = keys_ready(page, lease)
            choose(page, "2", "B better")
            key("Enter", "Your queue is empty")

            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["rankloop_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/"
            assert "rankloop_session" not in page.evaluate("document.cookie")  # scripts cannot read it
            (stored,) = _rows(workspace.db, "SELECT token_hash FROM sessions WHERE ended_at IS NULL")
            assert stored[0] == hashlib.sha256(session["value"].encode()).hexdigest() != session["value"]

        page.get_by_role("button", name="Log out").click()
        see("Logged out.")
        assert "rankloop_session" not in {c["name"] for c in context.cookies()}
        browser.close()

    shown = {cid: list(order) for cid, order in _rows(
        workspace.db, "SELECT comparison_id, display_order FROM judgments WHERE NOT skipped")}
    rows = _rows(workspace.db, "SELECT comparison_id, ranking, skipped, retracted_at IS NOT NULL FROM judgments "
                 "ORDER BY id")
    a, b, c, d = shown[four]
    assert [(r[0], r[2], r[3]) for r in rows] == [(four, False, False), (two[0], False, False),
                                                  (two[1], True, True), (two[1], False, False)]
    assert json.loads(rows[0][1]) == [[d], [a, c], [b]]
    assert json.loads(rows[1][1]) == [[shown[two[0]][0]], [shown[two[0]][1]]]  # A better
    assert json.loads(rows[3][1]) == [[shown[two[1]][1]], [shown[two[1]][0]]]  # B better
    logins = _rows(workspace.db, "SELECT count(*) FROM audit_log WHERE actor = 'rita' AND action = 'login'")
    assert logins == [(1,)]  # two reloads and a restart did not log in again
    assert _rows(workspace.db, "SELECT count(*) FROM sessions WHERE ended_at IS NULL") == [(0,)]


def test_cookie_is_secure_behind_https_and_dead_codes_are_refused(workspace, server):
    """Behind a proxy that says https the cookie gets Secure; a made-up or reused hand-over code sets nothing; a
    session that ended on the server (here: the account was deactivated) clears the cookie at the next load."""
    from playwright.sync_api import sync_playwright

    seed_comparisons(workspace.db, 1, k=2)
    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    set_cookies = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        context = browser.new_context(extra_http_headers={"X-Forwarded-Proto": "https"})
        page = context.new_page()
        visited = []
        page.on("response", lambda r: "/rankloop/session/" in r.url and (
            visited.append(r.url), set_cookies.append(r.all_headers().get("set-cookie", ""))))
        log_in_page(page, server.url, "rita", "rita's password")
        page.get_by_text("Prompt · item").first.wait_for(timeout=30_000)
        deactivate_user(workspace.db, "rita", actor="test")  # her session ends on the server
        page.reload()
        page.get_by_text("Your session ended").first.wait_for(timeout=30_000)  # and the dead cookie is cleared
        assert "rankloop_session" not in {c["name"] for c in context.cookies()}
        browser.close()
    assert len(set_cookies) == 1 and "Secure" in set_cookies[0] and "HttpOnly" in set_cookies[0]
    assert "SameSite=strict" in set_cookies[0] or "SameSite=Strict" in set_cookies[0]
    for code in ("made-up", visited[0].rsplit("/", 1)[1]):  # unknown, and the one already used
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(f"{server.url}rankloop/session/{code}")
        assert e.value.code == 303 and e.value.headers["Location"] == "/?notice=ended"
        assert "set-cookie" not in {k.lower() for k in e.value.headers.keys()}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_the_first_item_arrives_while_candidates_are_generated(workspace, server):
    """An empty queue while a `generate` job runs: the reviewer sees its progress, and the first comparison shows
    up by itself as soon as it exists (no reload)."""
    from playwright.sync_api import sync_playwright

    from rankloop.jobs import jobs_dir
    from store.jobs import add_job, finish_job

    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    job = add_job(workspace.db, "generate", ["generate"], "test", jobs_dir(workspace.root))
    with open(job.log_path, "w") as log:
        log.write("answers written: 1/4 [00:02, 9.5 tokens/s]\n")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
            page = browser.new_page()
            log_in_page(page, server.url, "rita", "rita's password")
            page.get_by_text("New answers are being generated: 1/4").first.wait_for(timeout=30_000)
            (cid,) = seed_comparisons(workspace.db, 1, k=2)
            page.get_by_text(f"Prompt · item {cid}").first.wait_for(timeout=15_000)  # no reload
            browser.close()
    finally:
        finish_job(workspace.db, job.id, "succeeded", exit_code=0)



def test_keys_pressed_faster_than_the_page_redraws_are_all_applied_in_order(workspace, server):
    """1-2-3-4 pressed 0-30 ms apart, then Enter, five times: every stored ranking is exactly A > B > C > D. Before
    annotate.keys, chromium dropped keys pressed while the ranking fragment redrew and the last answer was ranked by
    elimination (seen: A > B > D > C), or the guard refused keys that came together; now the browser queues them and
    the server applies the whole list in order. The keys' component takes no space on the page."""
    from playwright.sync_api import TimeoutError as Timeout
    from playwright.sync_api import sync_playwright

    gaps = (0, 30, 10, 0, 20)
    items = seed_comparisons(workspace.db, len(gaps), k=4)
    add_user(workspace.db, "fay", "reviewer", "fay's password", actor="test")
    ARTIFACTS.mkdir(exist_ok=True)
    seen = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
        log_in_page(page, server.url, "fay", "fay's password")
        line = page.locator("[data-testid='stMarkdownContainer']", has_text="Your ranking:").first
        for n, (cid, gap_ms) in enumerate(zip(items, gaps, strict=True)):
            try:
                page.get_by_text(f"item {cid}").first.wait_for(timeout=10_000)
            except Timeout:  # the Enter before did not submit: say what the page showed
                pytest.fail(f"item {cid} never came: the one before showed {line.inner_text()!r} ({seen})")
            page.wait_for_function(SETTLED, timeout=30_000)
            for k in "1234":
                page.keyboard.press(k)
                page.wait_for_timeout(gap_ms)
            if n == 0:  # how a reviewer sees it (the answers, the controls, the ranking line)
                page.wait_for_timeout(1000)
                page.wait_for_function(SETTLED, timeout=30_000)
                line.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "rank_keys_1366x900.png"))
            seen.append((gap_ms, line.inner_text().split("\n")[-1]))
            page.keyboard.press("Enter")  # in the same queue: it submits what the keys before it made
        page.get_by_text("Your queue is empty").first.wait_for(timeout=30_000)
        keys_box = page.locator(".st-key-rank-keys")
        assert keys_box.count() == 1 and keys_box.bounding_box() is None  # display: none, no layout shift
        browser.close()
    shown = dict(_rows(workspace.db, "SELECT comparison_id, display_order FROM judgments"))
    stored = dict(_rows(workspace.db, "SELECT comparison_id, ranking FROM judgments WHERE NOT skipped"))
    assert len(stored) == len(items), seen
    for cid in items:
        assert json.loads(stored[cid]) == [[rid] for rid in shown[cid]], (cid, seen)
