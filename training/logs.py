"""Where a trainer's logs go, and the callbacks every HF trainer (reward, SFT, DPO, RLOO/GRPO) gets."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def tensorboard_dir(folder: Path):
    """TRL/transformers read the TensorBoard folder from this variable when the trainer is built."""
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


def history_callback() -> Any:
    """A TrainerCallback keeping every logged number (loss, margins, scores...) and the step training (re)started
    from, so throughput counts only the steps this call ran."""
    from transformers import TrainerCallback

    class History(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.logs.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                                if isinstance(v, int | float)}})

    return History()


def trainer_callbacks(history: Any, early_stopping_patience: int, has_eval: bool,
                      callbacks: list[Any] | None) -> list[Any]:
    """History, the non-finite-loss stop, the caller's callbacks and early stopping when there is a held-out set."""
    from transformers import EarlyStoppingCallback

    from training.checks import finite_loss_callback

    extra = [history, finite_loss_callback(), *(callbacks or [])]
    if has_eval and early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    return extra
