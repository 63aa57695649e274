"""`train_sft` on reviewers' edits and top-ranked responses: rows come from store.labels, the loss covers only the
answer's tokens, the loss falls, and the policy row carries its lineage."""

from __future__ import annotations

import pytest

from rl.config import PolicyConfigError, SFTTrainingConfig
from tests.preferences import Seed
from tests.reward_data import BAD, GOOD, MIDDLE, register_tiny

EDIT = "Paris is the capital of France."


pytestmark = pytest.mark.usefixtures("one_thread")


def seed_sft(db, n: int = 8) -> None:
    seed = Seed()
    for i in range(n):
        key = f"c{i}"
        seed.comparison(key, f"Question {i}: what is the capital of France?", {"a": GOOD, "b": MIDDLE, "c": BAD})
        seed.judge(key, "alice", "a>b>c", edited_text=EDIT if i % 2 == 0 else None)
        seed.judge(key, "bob", "a=b>c")  # a tied top: no SFT row
    seed.write(db)


def tiny_sft(**kw) -> SFTTrainingConfig:
    values = dict(policy="tiny", max_steps=6, eval_steps=3, save_steps=3, logging_steps=1, learning_rate=5e-3,
                  report_to=[], eval_fraction=0.25, per_device_train_batch_size=4)
    values.update(kw)
    return SFTTrainingConfig(**values)


def test_sft_rows_come_from_edits_and_single_tops(workspace):
    from training.snapshot import take_snapshot

    def sft_rows(db, config):
        return take_snapshot(db, config, "sft")

    seed_sft(workspace.db)
    frame, snapshot = sft_rows(workspace.db, tiny_sft())
    assert snapshot["by_source"] == {"top": 8, "edit": 4} and snapshot["rows"] == 12
    assert set(frame["completion"]) == {GOOD, EDIT}
    assert snapshot["left_out"]["tied_tops"] == 8
    edits, _ = sft_rows(workspace.db, tiny_sft(source="edits"))
    assert set(edits["completion"]) == {EDIT}
    assert len(sft_rows(workspace.db, tiny_sft(max_pairs=5))[0]) == 5
    with pytest.raises(PolicyConfigError, match="source"):
        tiny_sft(source="all")


class Grab:
    @staticmethod
    def make(box: dict):
        from transformers import TrainerCallback

        class GrabBatch(TrainerCallback):
            def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
                box["batch"] = next(iter(train_dataloader))

        return GrabBatch()


def test_sft_trains_on_the_completion_only_and_registers_a_policy(workspace, tiny_lm):
    from transformers import AutoTokenizer

    from rl.sft import train_sft
    from store.models import get_model

    seed_sft(workspace.db)
    tiny_id = register_tiny(workspace.db, tiny_lm)
    box: dict = {}
    result = train_sft(workspace, tiny_sft(name="sft-v1"), progress=False, callbacks=[Grab.make(box)])
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    batch = box["batch"]
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        learned = tok.decode([t for t, label in zip(ids.tolist(), labels.tolist(), strict=True) if label != -100])
        assert "Question" not in learned and "user" not in learned  # the prompt is masked
        assert learned.startswith((GOOD, EDIT))
    m = result.metrics
    assert m["last_loss"] < m["first_loss"] and m["global_step"] == 6
    row = get_model(workspace.db, "sft-v1")
    assert row.kind == "policy" and row.parent_id == tiny_id and row.metrics["trainer"] == "sft"
    assert (result.model_dir / "config.json").is_file()
