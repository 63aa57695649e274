"""What every HF trainer (reward, SFT, DPO; RLOO/GRPO in part) shares: the TrainingArguments fields, where the logs
go, the callbacks, the fit itself (recorded on the run row, resumed from the newest complete checkpoint) and the
step metrics of its result."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def trainer_kwargs(config: Any, run_dir: Path, dev: Any, has_eval: bool, progress: bool, learning_rate: float,
                   save_steps: int) -> dict[str, Any]:
    """TrainingArguments fields every trainer config sets the same way (transformers 5: `activation_checkpointing`);
    `dev` is a `training.device.TrainingDevice`."""
    return dict(
        output_dir=str(run_dir), seed=config.seed, data_seed=config.seed, learning_rate=learning_rate,
        num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, warmup_steps=config.warmup_ratio,
        use_cpu=dev.device == "cpu", bf16=dev.bf16, activation_checkpointing=dev.gradient_checkpointing,
        eval_strategy="steps" if has_eval else "no", eval_steps=config.eval_steps, save_strategy="steps",
        save_steps=save_steps, save_total_limit=config.save_total_limit, logging_steps=config.logging_steps,
        report_to=list(config.report_to) or "none", disable_tqdm=not progress, dataloader_num_workers=0,
    )


CPU_HEAD_TOKENS = 1024  # positions per logits tile of TRL's fused LM head on a CPU (TRL: 4096)
CPU_HEAD_VOCAB = 8192  # vocabulary columns per tile on a CPU (TRL: 32768)


def lean_lm_head(device: str) -> bool:
    """On a CPU, make TRL's fused LM head (DPO, SFT and KTO score only the labels' log-probs through it, tile by
    tile) hold small tiles and score only the positions that carry a label. Returns whether it applied.

    TRL tiles the (positions x vocabulary) logits 4096 x 32768 and, off Triton devices, scores every position (its
    reason: Neuron recompiles per shape). On a CPU that means a float32 tile of up to 512 MiB with a handful of
    temporaries of its size (+2.6 GiB transient for 2048 positions of SmolLM2's 49152-token vocabulary, measured),
    i.e. two thirds of the full-vocabulary logits of every position of a typical batch at once, and the head's
    matmuls spent on prompt and padding positions, whose log-probs are thrown away (in HH DPO batches ~80% of
    positions). 1024 x 8192 tiles hold 32 MiB (+0.5 GiB transient for the same 2048 positions, 4% slower), and
    scoring labelled positions only is what TRL does on CUDA (same values: the others are zero either way). A
    process that trains on CUDA or MPS is left as TRL made it; TRL versions without these names are left alone."""
    if device != "cpu":
        return False
    try:
        import trl.kernels.chunked_logprob as kernel
        import trl.trainer.utils as utils
    except ImportError:
        return False
    if not all(hasattr(m, n) for m, n in ((kernel, "TOKEN_CHUNK_SIZE"), (utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"),
                                          (utils, "_use_triton"))):
        return False
    kernel.TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE = CPU_HEAD_TOKENS, CPU_HEAD_VOCAB
    if not getattr(utils._use_triton, "rankloop_compact_cpu", False):
        triton_device = utils._use_triton

        def compact(device: Any) -> bool:  # `utils` asks only whether to score labelled positions alone
            return device.type == "cpu" or triton_device(device)

        compact.rankloop_compact_cpu = True  # type: ignore[attr-defined]
        compact.trl = triton_device  # type: ignore[attr-defined]
        utils._use_triton = compact
    return True


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


def fit(db: Any, run_id: int, run_dir: Path, dev: Any, build: Callable[[], Any], checkpoint: str | None,
        record: dict[str, Any] | None = None, write: bool = True) -> tuple[Any, Any, float]:
    """Build the trainer (TensorBoard logs under the run folder), record the device and parameter counts (and
    `record`) on the run row (`write=False`: a non-main process), train from `checkpoint`: (trainer, the train
    output, seconds)."""
    from store.runs import update_run
    from training.models import count_parameters

    lean_lm_head(dev.device)
    with tensorboard_dir(run_dir / "tensorboard"):  # read when the trainer builds its TensorBoard callback
        trainer = build()
    total, trainable = count_parameters(trainer.model)
    if write:
        update_run(db, run_id, metrics={"device": dev.as_dict(), "parameters": total, "trainable": trainable,
                                        **(record or {})})
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, output, time.monotonic() - started


def step_metrics(trainer: Any, output: Any, seconds: float) -> dict[str, Any]:
    """Steps run (and whether early stopping cut them), the mean training loss and the time."""
    st = trainer.state
    return {"global_step": st.global_step, "max_steps": st.max_steps, "stopped_early": st.global_step < st.max_steps,
            "train_loss": output.training_loss, "train_seconds": round(seconds, 1)}
