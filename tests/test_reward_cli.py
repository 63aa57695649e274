"""The reward commands: exit codes first, then the workspace through the library (sqlite-utils style)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from store.models import list_models
from store.runs import list_runs
from tests.conftest import table_hash
from tests.reward_data import register_tiny, reward_cli, seed_pairs

FAST = ["--base", "tiny", "--set", "method=lora", "--max-steps", "2", "--set", "eval_steps=1", "--set", "report_to=[]",
        "--set", "eval_fraction=0.25", "--no-progress"]


@pytest.fixture
def ws(workspace, tiny_lm):
    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db, n=12)
    return workspace


def run(*args: str):
    return CliRunner().invoke(reward_cli(), list(args), catch_exceptions=False)


def test_train_eval_score_round_trip(ws):
    w = ["--workspace", str(ws.root)]
    result = run("train", "reward", *w, *FAST, "--name", "rm-1", "--margin", "--round", "0", "--round", "1")
    assert result.exit_code == 0, result.output
    assert "reward model 'rm-1'" in result.output and "held-out accuracy" in result.output
    (row,) = list_models(ws.db, kind="reward")
    (train_run,) = list_runs(ws.db, kind="reward")
    assert row.name == "rm-1" and train_run.config["config"]["margin"] is True
    assert train_run.config["config"]["rounds"] == [0, 1] and train_run.config["config"]["max_steps"] == 2

    result = run("eval", "reward", *w, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "rm-1" and 0 <= report["overall"]["accuracy"] <= 1

    result = run("score", *w)  # every comparison is complete: nothing pending
    assert result.exit_code == 0, result.output
    assert "scored 0 responses of 0 pending comparisons with 'rm-1'" in result.output
    result = run("score", *w, "--all")
    assert result.exit_code == 0, result.output
    assert "scored 36 responses of 12 comparisons (all) with 'rm-1'" in result.output
    assert "set the priority of 12 comparisons" in result.output
    assert run("score", *w, "--all", "--round", "0").exit_code == 2

    result = run("train", "reward", *w, *FAST, "--name", "rm-1")
    assert result.exit_code == 1 and "name: a model named 'rm-1' already exists" in result.output
    assert len(list_runs(ws.db, kind="reward")) == 1, "refused before any run started"


def test_bad_settings_fail_with_the_field_and_leave_the_workspace_alone(ws):
    w = ["--workspace", str(ws.root)]
    before = table_hash(ws.db)
    result = run("train", "reward", *w, *FAST, "--set", "lora_r=0")
    assert result.exit_code == 1 and "lora_r: must be >= 1" in result.output
    result = run("train", "reward", *w, "--set", "lora_rank=8")
    assert result.exit_code == 1 and "lora_rank: unknown field" in result.output
    (ws.root / "rankloop.toml").write_text(
        (ws.root / "rankloop.toml").read_text(encoding="utf-8") + '\n[reward]\nmethod = "qlora"\n', encoding="utf-8")
    result = run("train", "reward", *w)
    assert result.exit_code == 1
    assert f"{ws.root / 'rankloop.toml'}: [reward] method: must be 'auto', 'lora', 'full' or 'probe'" in result.output
    result = run("train", "reward", *w, "--resume")
    assert result.exit_code == 1 and "no unfinished reward run" in result.output
    result = run("eval", "reward", *w)
    assert result.exit_code == 1 and "no reward model in this workspace yet" in result.output
    assert run("score", *w, "--model", "missing").exit_code == 1
    assert table_hash(ws.db) == before

    (ws.root / "rankloop.toml").write_text('[reward]\nbase = "nope/not-here"\n', encoding="utf-8")
    result = run("train", "reward", *w, "--full", "--max-steps", "1")
    assert result.exit_code == 1 and "base: cannot load 'nope/not-here'" in result.output
    (failed,) = list_runs(ws.db, kind="reward")
    assert failed.status == "failed" and "nope/not-here" in failed.error and not list_models(ws.db, kind="reward")


def test_every_command_has_help():
    for args in (["train", "reward"], ["eval", "reward"], ["score"], ["train"], ["eval"]):
        result = run(*args, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, args
