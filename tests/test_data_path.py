"""One path for preference data: the trainers' rows are the export's rows, and a run keeps the rows it took (Parquet
in its folder) so an undo in the workspace afterwards changes neither the run's rows nor its hash, and a resume
trains on them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from store.db import read, write
from store.runs import get_run, list_runs
from tests.reward_data import register_tiny, seed_pairs, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def retract_first_judgment(db) -> int:
    """Undo alice's first judgment as the Rank page's undo does (the row stays, marked retracted)."""
    from store.judgments import retract_judgment

    jid, reviewer_id = read(db, lambda con: con.execute(
        "SELECT id, reviewer_id FROM judgments ORDER BY id LIMIT 1").fetchone())
    write(db, lambda con: retract_judgment(con, jid, reviewer_id, "alice", 3600))
    return jid


def test_the_dpo_trainer_reads_the_rows_the_export_writes(workspace, tmp_path):
    from rl.dpo import pairs_dataset
    from store.export import export
    from store.pairs import preference_pairs

    seed_pairs(workspace.db, n=6)
    out = tmp_path / "pairs.jsonl"
    export(workspace.db, "pairs", out, style="conversational", with_margin=False)
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    trained = list(pairs_dataset(preference_pairs(workspace.db)))
    assert len(exported) == 6 * 3 + 2 * 3 and trained == exported


def test_a_resumed_run_trains_on_its_saved_rows_after_an_undo(workspace, tiny_lm):
    from reward.train import resume_config, train_reward_model
    from tests.test_reward_train import CrashAfterSave
    from training.snapshot import ROWS_FILE, reproduce_snapshot, take_snapshot

    register_tiny(workspace.db, tiny_lm)
    seed_pairs(workspace.db)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_reward_model(workspace, tiny_config(max_steps=4, eval_steps=2), progress=False,
                           callbacks=[CrashAfterSave(2)])
    crashed = list_runs(workspace.db, kind="reward")[-1]
    snap = crashed.data_snapshot
    path = crashed.output_path and f"{crashed.output_path}/{ROWS_FILE}"
    assert snap["rows_file"] == ROWS_FILE and snap["pairs"] == 24 * 3 + 8 * 3
    saved = pd.read_parquet(path)
    file_bytes = open(path, "rb").read()
    assert len(saved) == snap["pairs"] and (saved["part"] == "eval").sum() == snap["eval_pairs"]

    undone = retract_first_judgment(workspace.db)
    config = tiny_config(max_steps=4, eval_steps=2)
    now, now_snap = take_snapshot(workspace.db, config)
    assert undone not in set(now["judgment_id"]) and now_snap["sha256"] != snap["sha256"]  # the workspace moved on
    with pytest.raises(ValueError, match="no longer match"):  # re-querying the workspace cannot give them back
        reproduce_snapshot(workspace.db, snap, config)

    run_id, config = resume_config(workspace, "latest")
    result = train_reward_model(workspace, config, resume_from=run_id, progress=False)
    resumed = get_run(workspace.db, result.run_id)
    assert resumed.status == "succeeded" and resumed.data_snapshot == snap  # same rows, same hashes
    assert result.metrics["train_pairs"] == snap["train_pairs"]
    assert result.metrics["eval_pairs"] == snap["eval_pairs"]
    assert open(path, "rb").read() == file_bytes  # the file was read, not rewritten
    assert undone in set(pd.read_parquet(path)["judgment_id"])


@pytest.mark.parametrize(("kind", "aggregate"), [(kind, aggregate) for kind in ("pairs", "sft", "kto")
                                                  for aggregate in (False, True)] + [("prompts", False)])
def test_every_kind_of_snapshot_reads_back_unchanged_after_an_undo(workspace, kind, aggregate):
    """Prompts (PPO's kind) are not judged, so they have no aggregated variant."""
    from rl.config import SFTTrainingConfig
    from rl.ppo_config import PPOTrainingConfig
    from store.rows import trl_rows
    from training.runs import open_run
    from training.snapshot import run_rows, snapshot_rows, take_snapshot

    seed_pairs(workspace.db)
    config = PPOTrainingConfig(report_to=[]) if kind == "prompts" else \
        SFTTrainingConfig(report_to=[], source="top", aggregate=aggregate)
    frame, snap = take_snapshot(workspace.db, config, kind)
    run_id, run_dir = open_run(workspace, kind, {"config": {}}, snap, rows=frame)
    recorded = get_run(workspace.db, run_id).data_snapshot
    assert recorded == snap and (run_dir / recorded["rows_file"]).is_file()

    retract_first_judgment(workspace.db)
    if kind != "prompts":  # prompts do not change with an undo; judgments' rows do
        assert take_snapshot(workspace.db, config, kind)[1]["sha256"] != snap["sha256"]
    again, again_snap = snapshot_rows(workspace.db, config, kind, resume_from=run_id)
    assert again_snap == recorded
    keys = ["prompt_id"] if kind == "prompts" else ["_id"] if kind in ("sft", "kto") else \
        ["comparison_id", "chosen_id", "rejected_id"]
    assert again[keys].values.tolist() == frame[keys].values.tolist()
    assert list(again["part"]) == list(frame["part"])
    assert len(run_rows(workspace.db, get_run(workspace.db, run_id), config)) == len(frame)
    if kind != "prompts":  # what a trainer builds from the file is what it built from the fresh snapshot
        assert trl_rows(kind, again, "conversational") == trl_rows(kind, frame, "conversational")
