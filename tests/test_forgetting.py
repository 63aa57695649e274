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
