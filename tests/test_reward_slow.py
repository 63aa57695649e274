"""The real backbones for a few steps on real HH pairs: train, evaluate, score (slow: real model weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reward.config import DEFAULT_BACKBONE, RewardTrainingConfig
from reward.data import read_pairs_file
from reward.evaluate import evaluate_reward_model
from reward.score import RewardScorer
from reward.train import train_reward_model
from store.batch import Batch, Comparison, Judgment, Prompt, Response, write_batch
from store.db import write
from store.models import get_model

HH = Path(__file__).resolve().parent / "fixtures" / "hh_harmless_sample.jsonl.gz"  # 200 real HH pairs (MIT)


def _load_hh(db, n: int) -> None:
    batch = Batch()
    for i, row in read_pairs_file(HH).head(n).iterrows():
        batch.prompts.append(Prompt(i, [{"role": "user", "content": row.prompt_text}], text=row.prompt_text))
        batch.responses += [Response((i, "c"), i, row.chosen), Response((i, "r"), i, row.rejected)]
        batch.comparisons.append(Comparison(i, i, [(i, "c"), (i, "r")], round=i % 2))
        batch.judgments.append(Judgment(i, "hh", f"hh-{i}", ranking=[[(i, "c")], [(i, "r")]]))
    write(db, lambda con: write_batch(con, batch))


@pytest.mark.slow
@pytest.mark.parametrize(("base", "method"), [(DEFAULT_BACKBONE, None),  # the defaults: the SmolLM2 probe
                                              ("all-minilm-l6-v2", "auto"),  # full fine-tuning (22M)
                                              ("smollm2-135m-instruct", "auto")])  # LoRA (135M)
def test_real_backbone_trains_evaluates_and_scores(workspace, base, method):
    if base == "smollm2-135m-instruct":
        from rankloop.models import prepare_models

        prepare_models(workspace)  # converts the GGUF once (~20 s), then cached
    _load_hh(workspace.db, 24)
    config = RewardTrainingConfig(base=base, max_steps=2, eval_steps=2, max_length=256, report_to=[],
                                  eval_fraction=0.25, per_device_train_batch_size=4,
                                  **({"method": method} if method else {}))
    result = train_reward_model(workspace, config, progress=False)
    row = get_model(workspace.db, result.model_name)
    assert row.parent_id == get_model(workspace.db, base).id, "lineage reaches the backbone's row"
    assert result.metrics["global_step"] == (0 if config.method == "probe" else 2) and result.metrics["eval_pairs"] > 0
    ev = evaluate_reward_model(workspace, result.model_name)
    assert (ev.report_dir / "report.md").is_file() and ev.metrics["pairs"] == result.metrics["eval_pairs"]
    assert ev.metrics["accuracy"] == result.metrics["eval_accuracy"]
    scores = RewardScorer(result.model_dir).score(["\n\nHuman: Hi!\n\nAssistant:"] * 2, [" Hello!", " Go away."])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
