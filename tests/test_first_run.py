"""The first run (scripts/demo): candidates written batch by batch with their progress, the demo's background
generate job followed through its log as the Runs page reads it, the demo guidelines in settings, the demo prompts,
and what `rankloop serve` says about accounts."""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner

from rankloop.commands.generate import generate_command
from rankloop.commands.serve import accounts_line
from rankloop.demo import GUIDELINES, PROMPTS, start_first_candidates, write_guidelines
from rankloop.jobs import read_log, refresh
from rl.sampling import SamplingParams, generate_candidates
from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import read, write
from store.models import add_model, get_model
from store.settings import get_settings, set_setting
from store.users import add_user, deactivate_user


def add_prompts(ws, n, split="train", start=0):
    prompts = [Prompt(start + i, [{"role": "user", "content": f"Question {start + i}: one two three"}], split=split)
               for i in range(n)]
    write(ws.db, lambda con: write_batch(con, Batch(prompts=prompts)))


def count(db, sql):
    return read(db, lambda con: con.execute(sql).fetchone()[0])


@pytest.fixture
def ws(workspace, tiny_lm):
    add_model(workspace.db, "tiny", "policy", path=str(tiny_lm))
    return workspace


def test_each_batch_is_queued_as_soon_as_it_is_decoded_and_reported(ws):
    add_prompts(ws, 3)
    seen = []  # (progress, comparisons and responses in the database at that moment)

    def progress(at):
        seen.append((at, count(ws.db, "SELECT count(*) FROM comparisons"),
                     count(ws.db, "SELECT count(*) FROM responses")))

    params = SamplingParams(k=2, max_new_tokens=6, batch_size=2, seed=0)  # one prompt per batch
    result = generate_candidates(ws.db, get_model(ws.db, "tiny"), n_prompts=3, params=params, progress=progress)
    assert [(a.prompts_done, a.answers_written, a.comparisons) for a, _, _ in seen] == \
        [(0, 0, 0), (1, 2, 1), (2, 4, 2), (3, 6, 3)]  # once loaded, then after each batch
    assert [(c, r) for _, c, r in seen] == [(0, 0), (1, 2), (2, 4), (3, 6)]  # already stored when reported
    assert all((a.prompts_total, a.answers_total) == (3, 6) for a, _, _ in seen)
    last = seen[-1][0]
    assert last.new_tokens == result.new_tokens > 0 and last.tokens_per_s > 0 and last.load_s > 0
    assert 0 <= last.finished == result.finished <= 6
    assert (result.comparisons, result.responses, result.batches) == (3, 6, 3)
    seeds = read(ws.db, lambda con: con.execute(
        "SELECT DISTINCT seed, CAST(params->>'batch' AS INT) FROM responses ORDER BY 1").fetchall())
    assert seeds == [(0, 0), (1, 1), (2, 2)]  # batch b still samples with seed + b


def test_an_error_after_the_first_batch_keeps_what_was_written(ws, monkeypatch):
    import rl.sampling

    add_prompts(ws, 3)
    real, calls = rl.sampling.sample_completions, []

    def fails_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job was cancelled while decoding the second batch
        return real(*args, **kwargs)

    monkeypatch.setattr(rl.sampling, "sample_completions", fails_second_time)
    with pytest.raises(KeyboardInterrupt):
        generate_candidates(ws.db, get_model(ws.db, "tiny"), n_prompts=3,
                            params=SamplingParams(k=2, max_new_tokens=4, batch_size=2))
    assert count(ws.db, "SELECT count(*) FROM comparisons") == 1
    assert count(ws.db, "SELECT count(*) FROM responses") == 2  # the finished batch, whole; nothing half-written


def test_cli_prints_progress_in_the_form_the_runs_page_reads(ws, tmp_path):
    add_prompts(ws, 3)
    r = CliRunner().invoke(generate_command, ["--policy", "tiny", "--prompts", "3", "--k", "2", "--batch-size", "4",
                                              "--max-new-tokens", "5", "--workspace", str(ws.root)])
    assert r.exit_code == 0, r.output
    lines = re.findall(r"answers written: .*", r.stderr)
    assert lines[0].startswith("answers written: 0/6 [model loaded in ")
    assert re.fullmatch(r"answers written: 4/6 \[2 comparisons queued, [\d.]+ tokens/s, \d ended with EOS\]",
                        lines[1]), lines
    assert lines[-1].startswith("answers written: 6/6 [3 comparisons queued, ")
    log = tmp_path / "job.log"
    log.write_text(r.stderr)
    view = read_log(log)
    assert (view.done, view.total) == (6, 6) and "tokens/s" in view.detail and "3 comparisons queued" in view.detail
    assert "Loading weights" not in r.output  # transformers' own bars are not this command's progress


def test_demo_guidelines_land_in_settings_once(workspace):
    assert write_guidelines(workspace.db) is True
    text = get_settings(workspace.db)["guidelines"]
    assert text == GUIDELINES.read_text(encoding="utf-8") and "Tie" in text and len(text) < 2000
    set_setting(workspace.db, "guidelines", "Our own rules.", "adam")
    assert write_guidelines(workspace.db) is False  # an admin's guidelines are never overwritten
    assert get_settings(workspace.db)["guidelines"] == "Our own rules."


def test_demo_prompts_ask_for_short_answers_and_hold_out_an_eval_split():
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert [r["split"] for r in rows].count("eval") == 4
    assert [r["split"] for r in rows[:9]].count("train") == 8  # the demo's first 8 train prompts come first
    short = re.compile(r"one sentence|two sentences|one or two sentences|haiku|four-line|one polite sentence|"
                       r"one-sentence|two-sentence|SQL query|Translate", re.I)
    assert [r["prompt"] for r in rows if not short.search(r["prompt"])] == []


def test_demo_starts_the_first_candidates_as_a_background_job_with_visible_progress(ws, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    add_prompts(ws, 3)
    add_prompts(ws, 1, split="eval", start=100)
    job = start_first_candidates(ws.root, ws.db, policy="tiny", comparisons=3, k=2, max_new_tokens=5)
    assert job is not None and job.command == "generate" and job.created_by == "demo"
    assert job.argv == ["generate", "--policy", "tiny", "--prompts", "3", "--k", "2", "--max-new-tokens", "5",
                        "--split", "train"]
    assert start_first_candidates(ws.root, ws.db, policy="tiny", comparisons=3) is None  # one is running already
    end = time.monotonic() + 120
    while (job := next(j for j in refresh(ws.db) if j.id == job.id)).active and time.monotonic() < end:
        time.sleep(0.3)
    view = read_log(job.log_path)
    assert job.status == "succeeded", view.text
    assert (view.done, view.total) == (6, 6) and "tokens/s" in view.detail
    assert count(ws.db, "SELECT count(*) FROM comparisons") == 3
    assert count(ws.db, "SELECT count(*) FROM comparisons c JOIN prompts p ON p.id = c.prompt_id "
                        "WHERE p.split = 'eval'") == 0
    assert start_first_candidates(ws.root, ws.db, policy="tiny", comparisons=3) is None  # nothing missing
    assert len(refresh(ws.db)) == 1


def test_serve_says_what_the_accounts_are_with_and_without_any(workspace):
    assert accounts_line(workspace).startswith("no accounts yet (none exist by default): make an admin with")
    add_user(workspace.db, "adam", "admin", "correct horse battery", "cli")
    add_user(workspace.db, "rita", "reviewer", "correct horse battery", "cli")
    add_user(workspace.db, "ruth", "reviewer", "correct horse battery", "cli")
    assert accounts_line(workspace).startswith("accounts: 1 admin, 2 reviewers (")
    deactivate_user(workspace.db, "ruth", "cli")
    assert accounts_line(workspace).startswith("accounts: 1 admin, 1 reviewer (")
    assert "no default" not in accounts_line(workspace)


def test_demo_entry_point_names_a_folder_that_is_not_a_workspace(tmp_path, capsys):
    from rankloop.demo import main

    assert main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nowhere") in err and "rankloop init" in err


def test_demo_entry_point_on_a_workspace_whose_candidates_exist_starts_nothing(workspace, capsys):
    from rankloop.demo import FIRST_COMPARISONS, main

    batch = Batch()
    for p in range(FIRST_COMPARISONS):
        batch.prompts.append(Prompt(p, [{"role": "user", "content": f"Question {p}"}]))
        batch.responses += [Response((p, i), p, f"answer {i}") for i in range(2)]
        batch.comparisons.append(Comparison(p, p, [(p, 0), (p, 1)]))
    write(workspace.db, lambda con: write_batch(con, batch))
    assert main([str(workspace.root)]) == 0
    out = capsys.readouterr().out
    assert "reviewer guidelines written" in out and get_settings(workspace.db)["guidelines"]
    assert f"first candidates: {FIRST_COMPARISONS} comparisons queued already" in out
    assert refresh(workspace.db) == []  # no job
    assert main([str(workspace.root)]) == 0
    assert "guidelines" not in capsys.readouterr().out  # written once


def test_a_niced_cpu_job_decodes_with_the_threads_other_processes_leave_idle(monkeypatch):
    import torch

    import rl.sampling

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(rl.sampling.os, "cpu_count", lambda: 4)
    samples = iter([(0.0, 0.0, 0.0),  # (wall s, machine busy CPU-s, this process's CPU-s)
                    (1.0, 1.0, 1.0),  # only this process was busy: all 4 threads
                    (2.0, 4.0, 1.5),  # others kept 2.5 cores busy: 1 thread (the 1.5 free cores round down)
                    (2.1, 4.3, 1.5),  # 0.1 s: too short to say, the count stays
                    (4.0, 6.0, 2.0)])  # others kept 0.75 core busy over 2 s: 3 threads
    monkeypatch.setattr(rl.sampling._CpuShare, "_sample", staticmethod(lambda: next(samples)))
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(rl.sampling.os, "nice", lambda inc: 10)  # a background job runs niced
        share = rl.sampling._CpuShare("cpu")
        assert [share.threads() for _ in range(4)] == [4, 1, 1, 3]
        monkeypatch.setattr(rl.sampling.os, "nice", lambda inc: 0)  # a foreground command: left alone
        assert rl.sampling._CpuShare("cpu").threads() is None
        monkeypatch.setattr(rl.sampling.os, "nice", lambda inc: 10)
        assert rl.sampling._CpuShare("cuda:0").threads() is None
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice wins
        assert rl.sampling._CpuShare("cpu").threads() is None
    finally:
        torch.set_num_threads(before)
