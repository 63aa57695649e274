"""`train_kto` with a tiny model: thumbs from rankings and "all bad" train it (loss falls, the desirable-vs-undesirable
margin rises, LoRA weights move), the policy row carries its lineage, a snapshot with one kind of label is refused
before any run row, an interrupted run resumes to the same step, and `loop --algo kto` runs a round."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl.config import KTOTrainingConfig, PolicyConfigError
from tests.preferences import Seed
from tests.reward_data import BAD, GOOD, MIDDLE, register_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def seed_thumbs(db, n: int = 12, all_bad: bool = True) -> None:
    """alice ranks good > middle > bad (good desirable, bad undesirable); every third comparison bob says "all
    bad" (three undesirable rows)."""
    seed = Seed()
    for i in range(n):
        key = f"c{i}"
        seed.comparison(key, f"Question {i}: say something useful.", {"a": GOOD, "b": MIDDLE, "c": BAD})
        seed.judge(key, "alice", "a>b>c")
        if all_bad and i % 3 == 0:
            seed.judge(key, "bob", all_bad=True)
    seed.write(db)


def tiny_kto(**kw) -> KTOTrainingConfig:
    values = dict(policy="tiny", max_steps=8, eval_steps=4, save_steps=4, logging_steps=1, learning_rate=5e-3,
                  report_to=[], eval_fraction=0.25, per_device_train_batch_size=4, per_device_eval_batch_size=8)
    values.update(kw)
    return KTOTrainingConfig(**values)


def test_kto_trains_on_thumbs_and_records_its_lineage(workspace, tiny_lm):
    from safetensors.torch import load_file

    from rl.kto import train_kto
    from store.models import get_model
    from store.runs import get_run

    seed_thumbs(workspace.db)
    tiny_id = register_tiny(workspace.db, tiny_lm)
    result = train_kto(workspace, tiny_kto(name="kto-v1"), progress=False)
    m = result.metrics
    assert m["global_step"] == 8 and m["last_loss"] < m["first_loss"]
    assert m["last"]["rewards/margins"] > m["first"]["rewards/margins"]
    # 12 top answers desirable; 12 bottom answers + 4 "all bad" x 3 undesirable, before the split
    assert m["undesirable"] > m["desirable"] > 0
    assert m["undesirable_weight"] == 1.0 and m["desirable_weight"] == pytest.approx(m["undesirable"] / m["desirable"])
    assert m["eval_loss"] is not None
    row = get_model(workspace.db, "kto-v1")
    assert row.kind == "policy" and row.parent_id == tiny_id and row.run_id == result.run_id
    assert row.metrics["trainer"] == "kto"
    run = get_run(workspace.db, result.run_id)
    assert run.kind == "kto" and run.status == "succeeded"
    assert run.data_snapshot["kind"] == "kto" and run.data_snapshot["rows"] == 12 + 12 + 4 * 3
    assert run.data_snapshot["rows_file"] and (result.run_dir / "snapshot.parquet").is_file()
    assert 0 < run.metrics["trainable"] < run.metrics["parameters"] / 2  # LoRA: adapters only
    before = load_file(str(tiny_lm / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert [k for k in before if not torch.equal(before[k], after[k])]


def test_training_rows_mix_labels_and_prompts_for_the_kl_pairs():
    import pandas as pd

    from rl.kto import balanced_weights, kto_order

    # four prompts with one desirable and two undesirable answers each, grouped by label (the worst order for TRL)
    frame = pd.DataFrame({"prompt_key": [1, 2, 3, 4] * 3, "label": [True] * 4 + [False] * 8})
    ordered = kto_order(frame)
    keys, labels = list(ordered["prompt_key"]), list(ordered["label"])
    assert sorted(zip(keys, labels, strict=True)) == sorted(zip(frame["prompt_key"], frame["label"], strict=True))
    assert all(a != b for a, b in zip(keys[:-1], keys[1:], strict=True))  # every KL pair is mismatched
    assert all(any(labels[i:i + 3]) and not all(labels[i:i + 3]) for i in range(0, 12, 3))  # both in every 3
    assert kto_order(frame).equals(ordered)
    assert balanced_weights(tiny_kto(), 2, 4) == (2.0, 1.0)
    assert balanced_weights(tiny_kto(undesirable_weight=0.5), 2, 4) == (1.0, 0.5)
    assert balanced_weights(tiny_kto(desirable_weight=3.0, undesirable_weight=1.0), 2, 4) == (3.0, 1.0)


def test_one_kind_of_label_is_refused_before_any_run_row(workspace, tiny_lm):
    from rl.kto import train_kto
    from store.runs import list_runs

    seed = Seed()
    for i in range(6):
        seed.comparison(f"c{i}", f"Question {i}?", {"a": GOOD, "b": BAD})
        seed.judge(f"c{i}", "bob", all_bad=True)
    seed.write(workspace.db)
    register_tiny(workspace.db, tiny_lm)
    with pytest.raises(PolicyConfigError, match="needs both desirable and undesirable labels.*all undesirable"):
        train_kto(workspace, tiny_kto(), progress=False)
    assert list_runs(workspace.db, kind="kto") == []
    with pytest.raises(PolicyConfigError, match="per_device_train_batch_size: KTO estimates its KL term"):
        tiny_kto(per_device_train_batch_size=1)


def test_interrupted_kto_run_resumes_to_the_same_step_count(workspace, tiny_lm):
    from rl.kto import RUN_KIND, train_kto
    from rl.training import resume_config
    from store.runs import get_run, list_runs
    from tests.test_dpo import StopAt

    seed_thumbs(workspace.db, n=8)
    register_tiny(workspace.db, tiny_lm)
    cfg = tiny_kto(max_steps=4, save_steps=2, eval_steps=100, name="resumed")
    with pytest.raises(KeyboardInterrupt):
        train_kto(workspace, cfg, progress=False, callbacks=[StopAt.make(3)])
    assert list_runs(workspace.db, kind="kto")[-1].status == "cancelled"
    run_id, saved = resume_config(workspace, RUN_KIND, KTOTrainingConfig, "latest")
    assert saved == cfg
    result = train_kto(workspace, saved, resume_from=run_id, progress=False)
    assert result.metrics["global_step"] == 4 and result.metrics["rows_per_s"] > 0  # the 2 steps this call ran
    run = get_run(workspace.db, result.run_id)
    assert run.status == "succeeded" and run.config["resumed_from"] == run_id
    assert result.run_dir == Path(get_run(workspace.db, run_id).output_path)  # the same folder, rows and checkpoints
    assert run.data_snapshot["sha256"] == get_run(workspace.db, run_id).data_snapshot["sha256"]


def test_cli_train_kto_prints_its_summary_and_refuses_a_bad_field(workspace, tiny_lm):
    from click.testing import CliRunner

    from rankloop.cli import main
    from store.models import get_model

    seed_thumbs(workspace.db, n=8)
    register_tiny(workspace.db, tiny_lm)
    runner = CliRunner()
    common = ["train", "kto", "-w", str(workspace.root), "--no-progress"]
    out = runner.invoke(main, [*common, "--policy", "tiny", "--max-steps", "1", "--beta", "0.2",
                               "--undesirable-weight", "0.5", "--set", "report_to=[]", "--name", "cli-kto"])
    assert out.exit_code == 0, out.output
    assert "desirable and" in out.output and "1 steps in" in out.output and "Traceback" not in out.output
    row = get_model(workspace.db, "cli-kto")
    assert row.metrics["trainer"] == "kto" and row.metrics["undesirable_weight"] == 0.5
    bad = runner.invoke(main, [*common, "--set", "betta=1"])
    assert bad.exit_code == 1 and "betta: unknown field" in bad.output
    bad = runner.invoke(main, [*common, "--resume"])
    assert bad.exit_code == 1 and "no unfinished kto run" in bad.output


def test_one_loop_round_with_kto(workspace, tiny_lm):
    from rankloop.loop import LoopConfig, run_loop
    from store.models import get_model
    from store.runs import get_run, list_runs
    from tests.test_loop import TRAINERS, loop_workspace

    ws = loop_workspace(workspace, tiny_lm, train=8)
    config = LoopConfig(rounds=1, algo="kto", policy="tiny", simulate="length-in-range", prompts=8, k=2,
                        max_new_tokens=6, max_steps=2, eval_prompts=2, eval_k=2, reviewers=1,
                        eval_policy_runs=False, reward=TRAINERS["reward"], kto=TRAINERS["dpo"])
    result = run_loop(ws, config, log=lambda line: None)
    assert get_run(ws.db, result.run_id).status == "succeeded"
    (kto,) = list_runs(ws.db, kind="kto")
    policy = get_model(ws.db, f"loop{result.run_id}-policy1")
    assert kto.status == "succeeded" and policy.run_id == kto.id and policy.parent_id == get_model(ws.db, "tiny").id
    assert kto.config["config"]["rounds"] == [0] and kto.data_snapshot["kind"] == "kto"
    assert result.rounds[0]["policy"] == policy.name
