"""The forgetting check (rl/forgetting.py): reference answers' log-likelihood under a policy vs the base; replay."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = Path(__file__).resolve().parents[1] / "rankloop" / "data" / "heldout_general.jsonl"


@pytest.fixture(scope="module")
def tiny_policy(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm), AutoTokenizer.from_pretrained(tiny_lm)


def _noised(model, scale: float, seed: int = 0):
    import torch

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


def test_the_shipped_set_loads_and_bad_lines_are_named(tmp_path):
    from rl.forgetting import load_heldout

    items = load_heldout(SHIPPED)
    assert len(items) == 40 and len({i.id for i in items}) == 40
    assert all(i.messages[0]["role"] == "user" and i.answer for i in items)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "answer": "a"}\n{"prompt": "q2"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: answer must be"):
        load_heldout(bad)


def test_batched_log_likelihoods_equal_one_at_a_time(tiny_policy):
    from rl.forgetting import answer_logliks, load_heldout

    model, tok = tiny_policy
    items = load_heldout(SHIPPED)[:6]
    together = answer_logliks(model, tok, items, "cpu", batch_size=6)
    alone = answer_logliks(model, tok, items, "cpu", batch_size=1)
    assert together == pytest.approx(alone, abs=1e-4)
    assert all(x < 0 for x in together)


def test_the_check_flags_a_damaged_policy_and_not_an_undamaged_one(tiny_policy):
    from rl.forgetting import forgetting_check, load_heldout

    model, tok = tiny_policy
    items = load_heldout(SHIPPED)[:8]
    same = forgetting_check((_noised(model, 1e-4), tok), (model, tok), items, threshold=0.1, device="cpu")
    assert not same["warn"] and abs(same["change"]) < 0.01 and "WARNING" not in same["message"]
    damaged = forgetting_check((_noised(model, 0.3), tok), (model, tok), items, threshold=0.1, device="cpu",
                               base_logliks=same["per_item_base"])
    assert damaged["warn"] and damaged["change"] < -0.1 and damaged["worse_share"] > 0.5
    assert "WARNING" in damaged["message"]


def test_the_round_report_shows_the_change_and_warns_past_the_threshold(workspace):
    from dataclasses import asdict

    from rankloop.loop_config import LoopConfig
    from rankloop.loop_report import write_loop_report
    from store.runs import start_run, update_run

    run_id = start_run(workspace.db, "loop", asdict(LoopConfig(rounds=2)))
    update_run(workspace.db, run_id, output_path=str(workspace.runs_dir / "loop"))
    check = {"items": 40, "loglik_new": -2.5, "loglik_base": -2.0, "change": -0.5, "worse_share": 0.9,
             "threshold": 0.1, "warn": True, "set": "rankloop/data/heldout_general.jsonl"}
    fine = {**check, "loglik_new": -1.98, "change": 0.02, "worse_share": 0.3, "warn": False}
    ev = {"policy": "p1", "base": "p0", "previous": "p0", "forgetting": fine}
    folder = write_loop_report(workspace, run_id, extra={(0, "evaluate"): ev,
                                                         (1, "evaluate"): {**ev, "policy": "p2", "forgetting": check}})
    report = (folder / "report.md").read_text()
    assert "| +0.020 |" in report and "| -0.500 **!** |" in report
    first, second = ((folder / f"round-{r}" / "report.md").read_text() for r in (1, 2))
    assert "change +0.020" in first and "WARNING" not in first
    assert "change -0.500" in second and "WARNING: the policy may be forgetting" in second


def test_a_bad_held_out_set_fails_before_the_loop_writes_anything(workspace, tiny_lm):
    from click.testing import CliRunner

    from rankloop.cli import main
    from tests.conftest import table_hash
    from tests.test_loop import loop_workspace

    ws = loop_workspace(workspace, tiny_lm, train=2, held_out=1)
    (ws.root / "qa.jsonl").write_text('{"prompt": "q"}\n', encoding="utf-8")
    before = table_hash(ws.db)
    out = CliRunner().invoke(main, ["loop", "-w", str(ws.root), "--policy", "tiny", "--rounds", "1", "--simulate",
                                    "length-in-range", "--set", "forgetting_set=qa.jsonl"])
    assert out.exit_code == 1, out.output
    assert "forgetting_set" in out.output and "qa.jsonl:1: answer must be" in out.output
    assert table_hash(ws.db) == before


def test_replay_puts_earlier_rounds_pairs_into_the_training_rows(workspace, tiny_lm):
    """DPO on round 1 with replay 0.5: as many round-0 pairs as round-1 training pairs join the training part (none
    held out), the snapshot records them and the run's saved rows (what --resume reads) hold them."""
    from pathlib import Path

    from rl.dpo import train_dpo
    from store.runs import get_run
    from tests.reward_data import register_tiny, seed_pairs
    from tests.test_dpo import tiny_dpo
    from training.snapshot import saved_rows

    seed_pairs(workspace.db, n=16, rounds=2)
    register_tiny(workspace.db, tiny_lm)
    result = train_dpo(workspace, tiny_dpo(rounds=[1], replay=0.5, max_steps=1, eval_steps=1), progress=False)
    run = get_run(workspace.db, result.run_id)
    snap = run.data_snapshot
    rows = saved_rows(Path(run.output_path), snap)
    own = rows[~rows["replay"]]
    replayed = rows[rows["replay"]]
    assert set(own["round"]) == {1} and set(replayed["round"]) == {0}
    assert len(replayed) == (own["part"] == "train").sum() > 0 and set(replayed["part"]) == {"train"}
    assert snap["replay"]["rows"] == len(replayed) and snap["replay"]["rounds"] == [0]
    assert snap["train_pairs"] == (rows["part"] == "train").sum() and snap["rounds"] == [0, 1]
    assert run.config["config"]["replay"] == 0.5
