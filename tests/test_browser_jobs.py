"""The Runs page in a real browser: an admin launches a reward training job with the mouse and keyboard, and its
log and progress stream into the page with no further clicks until it ends; then a second job is cancelled."""

import re

import pytest

from store.jobs import list_jobs
from store.users import add_user
from tests.reward_data import register_tiny, seed_pairs
from tests.test_browser import ARTIFACTS, CHROME_ARGS, CHROMIUM, SETTLED, log_in_page, server  # noqa: F401 - the fixture
from tests.test_jobs import TINY

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


def _launch(page, steps: int) -> None:
    page.get_by_role("textbox", name="Base").fill("tiny")
    page.get_by_role("spinbutton", name="Max steps").fill(str(steps))
    page.get_by_role("textbox", name="More settings").fill(TINY + f"eval_steps={min(steps, 1000)}")
    page.get_by_role("button", name="Launch").click()


def test_launch_follow_and_cancel_in_the_browser(workspace, tiny_lm, server):  # noqa: F811 - pytest fixture
    from playwright.sync_api import sync_playwright

    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, 24)
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        log_in_page(page, server, "adam", "adam's password")
        page.get_by_role("link", name="Runs").click()
        page.get_by_text("Launch a job").first.wait_for(timeout=20_000)
        page.wait_for_function(SETTLED, timeout=20_000)

        _launch(page, 40)
        page.get_by_text("Job 1 started").wait_for(timeout=20_000)
        # no clicks from here: the log streams in until the job ends
        page.get_by_text("[job 1] $ rankloop train reward").first.wait_for(timeout=60_000)
        done = page.get_by_text("[job 1] succeeded (exit code 0)").first
        done.wait_for(timeout=180_000)
        done.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "runs_job_succeeded.png"))

        page.wait_for_function(SETTLED, timeout=20_000)
        _launch(page, 100_000)
        page.get_by_text("Job 2 started").wait_for(timeout=20_000)
        progress = page.get_by_text(re.compile(r"\d+/100000( \[[^\]]*\])? · ")).first  # the progress bar's text
        try:
            progress.wait_for(timeout=120_000)
        except Exception as e:  # once seen in CI (2026-12-01, passed 3/3 on rerun): say what the job and page showed
            raise AssertionError(f"no progress bar for job 2: {e}\n{_jobs_and_logs(workspace)}\n"
                                 f"page text (end): {page.inner_text('body')[-1500:]}") from e
        progress.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "runs_job_running.png"))
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("[job 2] cancelled").first.wait_for(timeout=90_000)
        browser.close()
    # once seen in CI: job 1 `lost` though its log said succeeded (its runner's last write did not land?): say why
    assert [j.status for j in list_jobs(workspace.db)] == ["cancelled", "succeeded"], _jobs_and_logs(workspace)


def _jobs_and_logs(workspace) -> str:
    """Each job's row and the end of its log, for a failure message."""
    from pathlib import Path

    out = []
    for job in list_jobs(workspace.db):
        log = Path(job.log_path)
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:] if log.is_file() else "(no log file)"
        out.append(f"job {job.id} {job.status} exit {job.exit_code} error {job.error!r} started {job.started_at}; "
                   f"log {log} ends:\n{tail}")
    return "\n".join(out)
