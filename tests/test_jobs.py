"""Background jobs (rankloop.jobs): real `rankloop` commands in detached runner processes, followed through the
database and their logs; the form checks; cancel, the queue, and a runner that dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rankloop.job_commands import JobInputError, build_argv
from rankloop.jobs import cancel, launch, pid_is, read_log, refresh
from reward.train import RUN_KIND
from store.audit import list_events
from store.jobs import get_job, list_jobs
from store.runs import get_run, list_runs
from tests.reward_data import register_tiny, seed_pairs

# A tiny reward run: the tiny LM with LoRA, no TensorBoard.
TINY = "method=lora\nlearning_rate=3e-3\nreport_to=[]\neval_fraction=0.25\nper_device_train_batch_size=4\n"


@pytest.fixture
def jobs_ws(workspace, tiny_lm, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the command's torch: one thread is quicker for tiny models
    monkeypatch.setenv("RANKLOOP_CANCEL_GRACE_S", "20")
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, 24)
    return workspace


def wait_for(ws, job_id: int, done, timeout: float = 180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = next(j for j in refresh(ws.db) if j.id == job_id)
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s:\n{read_log(job.log_path).text}")


def finished(job) -> bool:
    return not job.active


def reward_job(ws, steps: int, **values):
    return launch(ws.root, ws.db, "train reward", {"base": "tiny", "max-steps": steps, **values},
                  TINY + f"eval_steps={min(steps, 1000)}\nlogging_steps=1", "adam")


def test_argv_is_built_from_the_form_only():
    assert build_argv("train reward", {"base": "tiny", "max-steps": 5, "margin": True, "lr": None},
                      "lora_r=8\n# a comment\n\nreport_to=[]") == [
        "train", "reward", "--base", "tiny", "--max-steps", "5", "--margin", "--set", "lora_r=8",
        "--set", "report_to=[]"]
    assert build_argv("loop", {"rounds": 1, "simulate": "length-in-range"}, "reward.learning_rate=5e-5\nrounds=1")[
        -4:] == ["--set", "reward.learning_rate=5e-5", "--set", "rounds=1"]
    assert build_argv("loop", {"rounds": 2, "new": True}) == ["loop", "--rounds", "2", "--new"]


@pytest.mark.parametrize(("command", "values", "settings", "message"), [
    ("rm -rf", {}, "", "command: 'rm -rf' cannot be launched"),
    ("train reward", {"max-steps": 0}, "", "max-steps: must be >= 1"),
    ("train reward", {"max-steps": 2.5}, "", "max-steps: expected a whole number"),
    ("train reward", {"max-steps": "many"}, "", "max-steps: expected a number"),
    ("train reward", {"base": "--config=/etc/passwd"}, "", "base: '--config=/etc/passwd' is not a name"),
    ("train reward", {"base": "a; rm -rf /"}, "", "base: 'a; rm -rf /' is not a name"),
    ("train reward", {"config": "x.toml"}, "", "config: not an option of `train reward`"),
    ("train reward", {}, "lora_r=8\nnope=1", "settings line 2: 'nope' is not a field of [reward]"),
    ("train reward", {}, "learning_rate=fast", "settings line 1: learning_rate: expected float"),
    ("train reward", {}, "reward.lora_r=8", "settings line 1: 'reward.lora_r' is not a field of [reward]"),
    ("train reward", {}, "just words", "settings line 1: expected FIELD=VALUE"),
    ("train dpo", {"device": "tpu"}, "", "device: must be one of cpu, cuda, mps"),
    ("round next", {}, "k=3", "settings line 1: `round next` takes no settings"),
    ("loop", {}, "sft.learning_rate=1", "settings line 1: 'sft.learning_rate' is not a field of [loop], [reward]"),
])
def test_bad_form_values_name_the_field(command, values, settings, message):
    with pytest.raises(JobInputError, match="^" + message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        build_argv(command, values, settings)


def test_a_bad_form_launches_nothing(jobs_ws):
    with pytest.raises(JobInputError):
        launch(jobs_ws.root, jobs_ws.db, "train reward", {}, "nope=1", "adam")
    assert list_jobs(jobs_ws.db) == [] and not list_events(jobs_ws.db, action="job.")


@pytest.mark.both_backends
def test_a_failing_command_ends_failed_with_its_error(workspace):
    job = launch(workspace.root, workspace.db, "train reward", {"max-steps": 2, "resume": True}, "", "adam")
    job = wait_for(workspace, job.id, finished, 60)
    assert job.status == "failed" and job.exit_code == 1
    assert job.error == "--resume: no unfinished reward run in this workspace to resume"
    log = read_log(job.log_path).text
    assert log.startswith("[job 1] $ rankloop train reward --max-steps 2 --resume") and "failed (exit code 1)" in log
    assert [e["details"]["command"] for e in list_events(workspace.db, action="job.launch")] == ["train reward"]


def test_a_training_job_runs_to_the_end_with_progress(jobs_ws):
    job = reward_job(jobs_ws, 4)
    assert job.status in ("starting", "running") and job.runner_pid
    job = wait_for(jobs_ws, job.id, finished)
    view = read_log(job.log_path)
    assert job.status == "succeeded" and job.exit_code == 0, view.text
    assert (view.done, view.total) == (4, 4)  # the trainer's progress bar, read from the log
    run = [r for r in list_runs(jobs_ws.db, kind=RUN_KIND)][-1]
    assert run.status == "succeeded" and run.metrics["global_step"] == 4
    assert not pid_is(job.child_pid, "rankloop")


def test_cancel_interrupts_the_run_and_the_queue_moves_on(jobs_ws):
    long = reward_job(jobs_ws, 100_000)
    # training has started: the trainer's own bar (an earlier bar, "Loading weights 20/20", comes before the run)
    wait_for(jobs_ws, long.id, lambda j: (view := read_log(j.log_path)).total == 100_000 and view.done >= 2, 120)
    (long_run,) = list_runs(jobs_ws.db, kind=RUN_KIND)
    queued = launch(jobs_ws.root, jobs_ws.db, "train reward", {"resume": True}, "", "adam")
    assert queued.status == "queued"  # one job at a time
    job = cancel(jobs_ws.db, long.id, "adam")
    assert job.cancel_requested_by == "adam"
    job = wait_for(jobs_ws, long.id, finished, 60)
    assert job.status == "cancelled"
    assert "cancel requested" in read_log(job.log_path).text and job.error == "cancelled by adam"
    assert not pid_is(job.child_pid, "rankloop")
    gone_by = time.monotonic() + 30  # the runner starts the queued job after recording the end, then exits
    while pid_is(job.runner_pid, "rankloop") and time.monotonic() < gone_by:
        time.sleep(0.2)
    assert not pid_is(job.runner_pid, "rankloop")
    run = get_run(jobs_ws.db, long_run.id)
    assert run.status == "cancelled", run.error  # the trainer saw the interruption and closed its run row
    # the runner started the queued job, which resumes the cancelled run (and is stopped here: enough shown)
    started = wait_for(jobs_ws, queued.id, lambda j: j.status != "queued", 60)
    assert started.status in ("starting", "running", "succeeded", "failed")
    if started.active:
        cancel(jobs_ws.db, queued.id, "adam")
    wait_for(jobs_ws, queued.id, finished, 60)
    assert [e["details"]["job"] for e in list_events(jobs_ws.db, action="job.cancel")][-1] == long.id


@pytest.mark.both_backends
def test_cancel_a_queued_job(workspace):
    from store.jobs import add_job

    job = add_job(workspace.db, "loop", ["loop"], "adam", workspace.root)
    assert cancel(workspace.db, job.id, "adam").status == "cancelled"
    with pytest.raises(ValueError, match="already ended"):
        cancel(workspace.db, job.id, "adam")


@pytest.mark.both_backends
def test_a_killed_runner_is_marked_lost(jobs_ws):
    job = reward_job(jobs_ws, 100_000)
    job = wait_for(jobs_ws, job.id, lambda j: j.child_pid is not None, 60)
    os.killpg(job.runner_pid, signal.SIGKILL)  # runner and command: the whole group, as a crash would
    job = wait_for(jobs_ws, job.id, finished, 30)
    assert job.status == "lost" and "runner ended" in job.error
    assert get_job(jobs_ws.db, job.id).finished_at is not None


@pytest.mark.both_backends
def test_a_job_running_on_another_machine_is_neither_lost_nor_signalled_here(workspace):
    """Team mode: servers on several machines share the jobs table, but only the runner's machine knows its PIDs."""
    from store.db import write
    from store.jobs import add_job, claim_next

    job = add_job(workspace.db, "loop", ["loop"], "adam", workspace.root)
    assert claim_next(workspace.db).id == job.id
    dead = 2**22 + 12345  # above pid_max here: no such process on this machine
    write(workspace.db, lambda con: con.execute(
        "UPDATE jobs SET runner_pid = ?, child_pid = ?, status = 'running', runner_host = 'gpu-box-2' WHERE id = ?",
        [dead, dead, job.id]))
    assert next(j for j in refresh(workspace.db) if j.id == job.id).status == "running"
    with pytest.raises(ValueError, match="job 1 runs on gpu-box-2: cancel it from a server or shell on that machine"):
        cancel(workspace.db, job.id, "adam")
    assert get_job(workspace.db, job.id).cancel_requested_at is None
    write(workspace.db, lambda con: con.execute("UPDATE jobs SET runner_host = NULL WHERE id = ?", [job.id]))
    assert next(j for j in refresh(workspace.db) if j.id == job.id).status == "lost"  # here, it would be lost


@pytest.mark.both_backends
def test_runners_claiming_at_once_start_one_job(workspace):
    """claim_next: the oldest queued job when none is starting or running; runners (two servers) asking at the
    same moment must not both see none running (on PostgreSQL a table lock, on DuckDB the file lock)."""
    import threading

    from store.jobs import add_job, claim_next, finish_job

    ids = [add_job(workspace.db, "loop", ["loop"], "adam", workspace.root).id for _ in range(4)]
    for expected in ids[:3]:  # a few rounds: the race is short
        go, claimed = threading.Barrier(6), []

        def runner(go=go, claimed=claimed):
            go.wait()
            claimed.append(claim_next(workspace.db))

        threads = [threading.Thread(target=runner) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        started = [j for j in claimed if j is not None]
        assert len(claimed) == 6 and [j.id for j in started] == [expected] and started[0].status == "starting"
        finish_job(workspace.db, expected, "succeeded", 0)
    assert [j.status for j in list_jobs(workspace.db)] == ["queued"] + ["succeeded"] * 3
