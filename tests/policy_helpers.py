"""Helpers for the policy-stage tests: a tiny reward model folder registered without training, and policies."""

from __future__ import annotations

from pathlib import Path

from store.models import add_model


def tiny_reward_model(folder: Path, lm: Path) -> Path:
    """A 1-output sequence classifier on the tiny LM's config, saved as a full (non-LoRA) rankloop reward model."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from reward.backbone import write_meta

    torch.manual_seed(1)
    cfg = AutoConfig.from_pretrained(lm, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(cfg)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(lm).save_pretrained(str(folder))
    write_meta(folder, {"format": 1, "method": "full", "base": str(lm), "max_length": 128, "append_eos": True,
                        "run_id": None, "heads": ["score"]})
    return folder


def register_reward(db, folder: Path, name: str = "rm") -> int:
    return add_model(db, name, "reward", base=str(folder), path=str(folder))


def register_policy(db, folder: Path, name: str, parent_id: int | None = None) -> int:
    return add_model(db, name, "policy", base=str(folder), path=str(folder), parent_id=parent_id)


def count_e(prompts, responses):
    """Toy reward: how often 'e' appears in the response (a quarter point each)."""
    return [r.count("e") / 4 for r in responses]


class Interrupt:
    """A toy reward that raises KeyboardInterrupt on its `at`-th call (one call per iteration): Ctrl-C mid-run."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return count_e(prompts, responses)
