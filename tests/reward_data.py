"""A small, learnable preference set for reward-model tests, and a click group holding the reward commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from store.models import add_model
from tests.preferences import Ids, Seed

GOOD = "The capital of France is Paris."
MIDDLE = "one two three four five"
BAD = "I am sorry, I cannot help with that."


def seed_pairs(db: str | Path, n: int = 24, rounds: int = 2) -> Ids:
    """`n` comparisons of three responses (good > middle > bad, so one pair per comparison is 2 ranks apart),
    ranked by alice; bob ranks every third one with the bottom two swapped. Rounds cycle 0..rounds-1."""
    seed = Seed()
    for i in range(n):
        key = f"c{i}"
        seed.comparison(key, f"Question {i}: say something useful.", {"a": GOOD, "b": MIDDLE, "c": BAD},
                        round=i % rounds)
        seed.judge(key, "alice", "a>b>c")
        if i % 3 == 0:
            seed.judge(key, "bob", "a>c>b")
    return seed.write(db)


def register_tiny(db: str | Path, folder: Path, name: str = "tiny") -> int:
    """The tiny LM as a workspace policy row, so a reward model's lineage points at it."""
    return add_model(db, name, "policy", base=str(folder), path=str(folder))


def tiny_config(**overrides: Any):
    from reward.config import RewardTrainingConfig

    values: dict[str, Any] = {"base": "tiny", "method": "lora", "max_steps": 6, "eval_steps": 3, "logging_steps": 1,
                              "learning_rate": 3e-3, "report_to": [], "eval_fraction": 0.25,
                              "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8}
    values.update(overrides)
    return RewardTrainingConfig(**values)


def reward_cli() -> click.Group:
    """The reward commands in a group of their own (the lead registers them in rankloop.cli)."""
    from rankloop.commands.reward import eval_group, score_command, train_group

    @click.group()
    def cli() -> None:
        pass

    for command in (train_group, eval_group, score_command):
        cli.add_command(command)
    return cli
