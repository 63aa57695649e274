"""`rankloop loop` on tiny models: one full round (run rows, lineage, report files), and a real process killed with
SIGKILL mid-run, then run again: it continues and finishes with no duplicated judgments or models."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.policy_helpers import register_policy

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = {"reward": {"base": "tiny", "report_to": [], "eval_fraction": 0.3, "per_device_train_batch_size": 4,
                       "learning_rate": 3e-3, "eval_steps": 2},
            "dpo": {"report_to": [], "eval_fraction": 0.3, "per_device_train_batch_size": 4, "learning_rate": 5e-3,
                    "save_steps": 1, "eval_steps": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")


def loop_workspace(workspace, tiny_lm, train: int = 16, held_out: int = 2):
    from tests.test_policy_eval import seed_prompts

    register_policy(workspace.db, tiny_lm, "tiny")
    seed_prompts(workspace.db, held_out, split="eval")
    from store.batch import Batch, Prompt, write_batch
    from store.db import write

    batch = Batch(prompts=[Prompt(f"t{i}", [{"role": "user", "content": f"Tell me about topic {i}."}])
                           for i in range(train)])
    write(workspace.db, lambda con: write_batch(con, batch))
    return workspace


@pytest.mark.both_backends  # the whole circle on a PostgreSQL workspace too
def test_one_full_ppo_round_has_its_run_rows_lineage_and_report(workspace, tiny_lm):
    from rankloop.loop import LoopConfig, run_loop
    from store.models import get_model
    from store.runs import get_run, list_runs
    from store.simulated import round_judgments

    ws = loop_workspace(workspace, tiny_lm)
    ppo = {"report_to": [], "rollout_batch_size": 4, "num_minibatches": 2, "max_new_tokens": 6, "ppo_epochs": 1}
    config = LoopConfig(rounds=1, algo="ppo", policy="tiny", simulate="length-in-range", prompts=8, k=2,
                        max_new_tokens=6, max_steps=2, eval_prompts=2, eval_k=2, reviewers=2, required_reviewers=2,
                        noise=0.1, reward=TRAINERS["reward"], ppo=ppo)
    result = run_loop(ws, config, log=lambda line: None)
    loop = get_run(ws.db, result.run_id)
    assert loop.kind == "loop" and loop.status == "succeeded" and loop.output_path == str(result.folder)
    assert loop.config["engine"] == "hf"  # the sampling engine is recorded: a resume samples as the loop started
    steps = [r for r in list_runs(ws.db, kind="loop_step")]
    assert [(r.config["round"], r.config["step"], r.status) for r in steps] == [
        (0, s, "succeeded") for s in ("sample", "judge", "reward", "policy", "evaluate")]
    kinds = [r.kind for r in list_runs(ws.db) if r.kind not in ("loop", "loop_step")]
    assert kinds == ["round", "simulate", "reward", "ppo", "eval_policy"]
    assert all(r.status == "succeeded" for r in list_runs(ws.db))
    # lineage: policy1 <- tiny, by PPO against the reward model trained on round 0's simulated judgments
    rm, policy = get_model(ws.db, f"loop{result.run_id}-reward0"), get_model(ws.db, f"loop{result.run_id}-policy1")
    assert policy.parent_id == get_model(ws.db, "tiny").id and policy.round == 0 and rm.round == 0
    assert get_run(ws.db, policy.run_id).data_snapshot["reward_model_id"] == rm.id
    assert get_run(ws.db, rm.run_id).config["config"]["rounds"] == [0]
    judged = round_judgments(ws.db, 0)
    assert len(judged) == 16 and {j["source"] for j in judged} == {"simulated"}
    m = result.rounds[0]
    assert 0 <= m["oracle_win_rate_vs_base"] <= 1 and m["oracle_n"] == 4
    assert m["drift"]["score"]["ks"] is not None and math.isfinite(m["kl_vs_previous"])
    report = (result.folder / "report.md").read_text()
    assert "| round | policy | oracle win vs round 0" in report and "## Round 1" in report
    for png in ("win_rates.png", "reward_model.png", "kl_length.png", "oracle_reward.png", "drift.png"):
        assert (result.folder / png).stat().st_size > 1000 and f"]({png})" in report
    evaluate = steps[-1]  # the round's own report, which the admin runs page lists too
    assert evaluate.output_path == str(result.folder / "round-1")
    round_report = (result.folder / "round-1" / "report.md").read_text()
    assert "# Loop" in round_report
    c = m["collapse"]  # the collapse check read both policies' held-out samples and its line is in the report
    assert 0 < c["distinct2"] <= 1 and 0 < c["distinct2_base"] <= 1 and c["threshold"] == 0.5
    assert f"distinct-2 (distinct word bigrams over all) of the held-out samples {c['distinct2']:.3f}" in round_report
    assert (result.folder / "round-1" / "drift.png").is_file()


def _loop_command(ws: Path) -> list[str]:
    import json

    sets = [f"{section}.{k}={json.dumps(v)}" for section in ("reward", "dpo") for k, v in TRAINERS[section].items()]
    args = [sys.executable, "-m", "rankloop", "loop", "-w", str(ws), "--policy", "tiny", "--simulate",
            "length-in-range", "--rounds", "2", "--prompts", "6", "--k", "2", "--max-new-tokens", "6",
            "--max-steps", "3", "--eval-prompts", "2", "--set", "eval_k=2", "--set", "required_reviewers=2",
            "--reviewers", "2"]
    for s in sets:
        args += ["--set", s]
    return args


def test_a_killed_loop_resumes_and_finishes_without_duplicates(workspace, tiny_lm):
    from store.db import read
    from store.models import list_models
    from store.runs import list_runs

    ws = loop_workspace(workspace, tiny_lm)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(_loop_command(ws.root), cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    seen: list[str] = []
    deadline = time.monotonic() + 150
    for line in proc.stderr:  # kill it inside round 2's DPO run: its run row exists, training has begun
        seen.append(line)
        started = any("round 2/2 policy ..." in x for x in seen)
        if (started and "Tokenizing train dataset" in line) or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any("round 2/2 policy ..." in line for line in seen), "".join(seen)
    assert [r.status for r in list_runs(ws.db, kind="loop")] == ["running"]

    done = subprocess.run(_loop_command(ws.root), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr and "round 1/2 judge: done before" in done.stderr
    loop = list_runs(ws.db, kind="loop")
    assert [r.status for r in loop] == ["succeeded"]
    steps = [r for r in list_runs(ws.db, kind="loop_step")]
    ok = sorted((r.config["round"], r.config["step"]) for r in steps if r.status == "succeeded")
    assert ok == sorted((i, s) for i in range(2) for s in ("sample", "judge", "reward", "policy", "evaluate"))
    assert [(r.config["round"], r.config["step"]) for r in steps if r.status != "succeeded"] == [(1, "policy")]
    cancelled = sorted((r.kind, r.error) for r in list_runs(ws.db) if r.status == "cancelled")
    assert cancelled == [("dpo", f"interrupted; loop run {loop[0].id} resumed"),
                         ("loop_step", f"interrupted; loop run {loop[0].id} resumed")]
    assert not [r for r in list_runs(ws.db) if r.status == "running"]  # the killed DPO run was closed
    names = [m.name for m in list_models(ws.db)]
    lid = loop[0].id
    assert sorted(n for n in names if n.startswith("loop")) == [
        f"loop{lid}-policy1", f"loop{lid}-policy2", f"loop{lid}-reward0", f"loop{lid}-reward1"]
    dup = read(ws.db, lambda con: con.execute(
        "SELECT count(*), count(DISTINCT (comparison_id, reviewer_id)) FROM judgments").fetchone())
    assert dup[0] == dup[1] == 2 * 6 * 2  # 2 rounds x 6 comparisons x 2 reviewers, each once
    assert (Path(loop[0].output_path) / "report.md").is_file()


@pytest.mark.parametrize("args, message", [
    (["--simulate", "nonsense"], "oracle 'nonsense': unknown"),
    (["--simulate", "no_such_module_xyz:f"], "cannot import module 'no_such_module_xyz'"),
    (["--simulate", "length-in-range", "--set", "nope=1"], "nope: unknown field"),
    (["--simulate", "length-in-range", "--k", "1"], "k: must be between 2 and 16"),
    (["--simulate", "length-in-range", "--noise", "-0.5"], "noise: must be >= 0"),
    (["--simulate", "length-in-range", "--set", "dpo.beta=0"], "beta: must be > 0"),
    (["--simulate", "length-in-range", "--reviewers", "1", "--required-reviewers", "2"], "cannot give the 2"),
])
def test_bad_loop_input_fails_cleanly_and_writes_nothing(workspace, tiny_lm, args, message):
    from click.testing import CliRunner

    from rankloop.cli import main
    from tests.conftest import table_hash

    ws = loop_workspace(workspace, tiny_lm, train=2, held_out=1)
    before = table_hash(ws.db)
    out = CliRunner().invoke(main, ["loop", "-w", str(ws.root), "--policy", "tiny", "--rounds", "1", *args])
    assert out.exit_code == 1, out.output
    assert message in out.output and "Traceback" not in out.output
    assert table_hash(ws.db) == before


def test_without_an_oracle_the_loop_waits_for_reviewers_then_resumes(workspace, tiny_lm):
    from rankloop.loop import LoopConfig, ReviewersNotDone, run_loop
    from rankloop.simulate import SimulationConfig, simulate_reviewers
    from store.runs import list_runs

    ws = loop_workspace(workspace, tiny_lm, train=8)
    config = LoopConfig(rounds=1, policy="tiny", prompts=8, k=2, max_new_tokens=6, max_steps=2, eval_prompts=2,
                        eval_policy_runs=False, poll_seconds=0.1, wait_timeout=0.3, **TRAINERS)
    lines: list[str] = []
    with pytest.raises(ReviewersNotDone, match="round 0: reviewers did not finish within 0s"):
        run_loop(ws, config, log=lines.append)
    assert any("0/8 comparisons complete, 0/8 judgments (waiting for reviewers" in line for line in lines)
    assert [r.status for r in list_runs(ws.db, kind="loop")] == ["failed"]
    simulate_reviewers(ws, SimulationConfig("length-in-range", reviewers=1, round=0))  # the people did their part
    result = run_loop(ws, config, log=lines.append)
    assert result.resumed and [r.status for r in list_runs(ws.db, kind="loop")] == ["succeeded"]
    assert any("round 1/1 sample: done before" in line for line in lines)
    assert result.rounds[0]["policy"] == f"loop{result.run_id}-policy1" and "oracle_win_rate_vs_base" not in \
        result.rounds[0]


def test_resuming_with_other_options_is_refused_naming_them(workspace, tiny_lm):
    """An unfinished loop resumes with its recorded settings; asking for others must not be silently ignored."""
    from dataclasses import asdict

    from click.testing import CliRunner

    from rankloop.cli import main
    from rankloop.loop import LoopConfig
    from store.runs import finish_run, start_run
    from tests.conftest import table_hash

    ws = loop_workspace(workspace, tiny_lm, train=2, held_out=1)
    run_id = start_run(ws.db, "loop", asdict(LoopConfig(rounds=1, policy="tiny", simulate="length-in-range")))
    finish_run(ws.db, run_id, "failed", error="killed")
    before = table_hash(ws.db)
    out = CliRunner().invoke(main, ["loop", "-w", str(ws.root), "--policy", "tiny", "--rounds", "3",
                                    "--set", "dpo.beta=0.5"])
    assert out.exit_code == 1, out.output
    assert f"loop run {run_id} is unfinished (failed)" in out.output and "rounds=1 (asked: 3)" in out.output
    assert "dpo.beta=the trainer's default (asked: 0.5)" in out.output and "--new" in out.output
    assert "Traceback" not in out.output
    assert table_hash(ws.db) == before


def test_each_policy_is_sampled_once_for_evaluation_across_rounds(workspace, tiny_lm, monkeypatch):
    """The evaluate step and `eval policy`'s run (eval_policy_runs, on by default) share one set of samples: each
    policy is sampled once on the held-out prompts, and a policy that comes back as the next round's previous or
    base is not sampled again."""
    import rl.sampling
    from rankloop.loop import LoopConfig, run_loop
    from store.models import list_models
    from store.prompts import list_prompts
    from store.runs import list_runs

    ws = loop_workspace(workspace, tiny_lm, train=12)
    held_out = [p.messages for p in list_prompts(ws.db, ["eval"])]
    location_of: dict[int, str] = {}
    calls: list[tuple[str, int]] = []  # (model location, eval prompts sampled) for each call on held-out prompts
    load, sample = rl.sampling.load_policy, rl.sampling.sample_completions

    def counting_load(location, *args, **kwargs):
        model, tok = load(location, *args, **kwargs)
        location_of[id(model)] = location
        return model, tok

    def counting_sample(model, tokenizer, conversations, params, *args, **kwargs):
        if conversations and all(c in held_out for c in conversations):
            calls.append((location_of.get(id(model), "?"), len(conversations)))
        return sample(model, tokenizer, conversations, params, *args, **kwargs)

    monkeypatch.setattr(rl.sampling, "load_policy", counting_load)
    monkeypatch.setattr(rl.sampling, "sample_completions", counting_sample)
    config = LoopConfig(rounds=2, policy="tiny", simulate="length-in-range", prompts=6, k=2, max_new_tokens=6,
                        max_steps=2, eval_prompts=2, eval_k=2, reviewers=1, **TRAINERS)
    assert config.eval_policy_runs
    result = run_loop(ws, config, log=lambda line: None)

    assert [r.status for r in list_runs(ws.db, kind="eval_policy")] == ["succeeded", "succeeded"]
    names = {rl.sampling.policy_location(m): m.name for m in list_models(ws.db) if m.kind == "policy"}
    sampled = [(names[location], n) for location, n in calls]
    loop = result.run_id
    assert sorted(sampled) == sorted([("tiny", 2), (f"loop{loop}-policy1", 2), (f"loop{loop}-policy2", 2)])
    for i, m in enumerate(result.rounds):  # the loop's figures and the eval run's come from the same samples
        assert m["eval_samples"] == 2 * 2 and m["policy"] == f"loop{loop}-policy{i + 1}"


def test_a_resumed_loop_samples_with_the_engine_it_started_with(workspace, tiny_lm, monkeypatch):
    """The workspace now says hf; the unfinished loop was started with vllm: the resume keeps vllm."""
    from dataclasses import asdict

    import rankloop.loop as loop_module
    from rankloop.loop import LoopConfig, run_loop
    from store.runs import finish_run, start_run

    ws = loop_workspace(workspace, tiny_lm)
    config = LoopConfig(rounds=1, algo="dpo", policy="tiny", simulate="length-in-range")
    run_id = start_run(ws.db, "loop", {**asdict(config), "engine": "vllm"})
    finish_run(ws.db, run_id, "failed", error="killed")
    seen = []

    class Stop(Exception):
        pass

    def run(self):
        seen.append(self.engine)
        raise Stop

    monkeypatch.setattr(loop_module._Loop, "run", run)
    with pytest.raises(Stop):
        run_loop(ws, config, log=lambda line: None)
    assert seen == ["vllm"]
