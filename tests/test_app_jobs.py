"""The admin Runs page (AppTest): launch a real training job from the form, follow its log, cancel another; a
reviewer ranks on the Rank page while the job trains; bad form values launch nothing. Read back from DuckDB."""

from __future__ import annotations

import pytest

from rankloop.jobs import read_log
from store.db import read
from store.jobs import list_jobs
from store.users import add_user
from tests.reward_data import register_tiny, seed_pairs
from tests.test_app_login import PAGES, app, button, log_in, texts
from tests.test_jobs import TINY, finished, wait_for
from tests.test_queue import seed_comparisons


@pytest.fixture
def runs_page(workspace, tiny_lm, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RANKLOOP_CANCEL_GRACE_S", "20")
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, 24)
    add_user(workspace.db, "adam", "admin", "adam's password", actor="test")
    at = log_in(app(workspace, monkeypatch), "adam", "adam's password")
    at.switch_page(str(PAGES / "jobs.py")).run()
    assert not at.exception, at.exception
    return workspace, at


def _fill(at, command: str, values: dict, settings: str = ""):
    at.selectbox(key="job_command").set_value(command).run()
    for name, value in values.items():
        key = f"job_{command}_{name}"
        widget = next((w for kind in ("text_input", "number_input", "checkbox") for w in getattr(at, kind)
                       if w.key == key), None)
        assert widget is not None, key
        widget.set_value(value)
    if settings:
        at.text_area(key=f"job_{command}_settings").input(settings)
    button(at, "Launch").click().run()
    assert not at.exception, at.exception
    return at


def test_launch_from_the_page_while_a_reviewer_ranks(runs_page, monkeypatch):
    ws, at = runs_page
    _fill(at, "train reward", {"base": "tiny", "max-steps": 30}, TINY + "eval_steps=30")
    (job,) = list_jobs(ws.db)
    assert f"Job {job.id} started" in texts(at) and job.created_by == "adam"
    assert job.argv[:6] == ["train", "reward", "--base", "tiny", "--max-steps", "30"]

    # the reviewers' page keeps working while the job trains in its own process
    seed_comparisons(ws.db, 1, k=2, round=7)
    add_user(ws.db, "rita", "reviewer", "rita's password", actor="test")
    rita = log_in(app(ws, monkeypatch), "rita", "rita's password")
    assert list_jobs(ws.db)[0].active
    button(rita, "A better").click().run()
    button(rita, "Submit").click().run()
    assert not rita.exception, rita.exception
    # through the store, which waits while the job's process holds the file (a bare duckdb.connect fails then)
    assert read(ws.db, lambda con: con.execute(
        "SELECT count(*) FROM judgments j JOIN reviewers r ON r.id = j.reviewer_id WHERE r.name = 'rita'"
    ).fetchone()[0]) == 1

    job = wait_for(ws, job.id, finished)
    assert job.status == "succeeded", read_log(job.log_path).text
    at.run()
    shown = texts(at)
    assert f"Job {job.id}" in shown and "succeeded (exit code 0)" in shown and "30/30" in shown


def test_bad_settings_launch_nothing(runs_page):
    ws, at = runs_page
    _fill(at, "train reward", {"max-steps": 3}, "nope=1")
    assert "Not launched: settings line 1: 'nope' is not a field of [reward]" in texts(at)
    assert list_jobs(ws.db) == []


def test_cancel_from_the_page(runs_page):
    ws, at = runs_page
    _fill(at, "train reward", {"base": "tiny", "max-steps": 100_000}, TINY + "eval_steps=1000")
    (job,) = list_jobs(ws.db)
    wait_for(ws, job.id, lambda j: (read_log(j.log_path).done or 0) >= 1, 120)
    at.run()
    button(at, "Cancel").click().run()
    assert not at.exception, at.exception
    job = wait_for(ws, job.id, finished, 60)
    assert job.status == "cancelled" and job.cancel_requested_by == "adam"
    at.run()
    assert "cancelled" in texts(at)


def test_generate_tab_launches_a_job(runs_page):
    ws, at = runs_page
    at.switch_page(str(PAGES / "queue.py")).run()
    at.number_input(key="job_generate_prompts").set_value(1)
    button(at, "Launch").click().run()
    assert not at.exception, at.exception
    (job,) = list_jobs(ws.db)
    assert job.command == "generate" and job.argv[:3] == ["generate", "--prompts", "1"]
    job = wait_for(ws, job.id, finished, 120)
    at.run()
    assert f"Job {job.id}" in texts(at)
