"""Guards shared by every trainer (reward, DPO, SFT, PPO): what is resumed, and when a run must stop.

- A checkpoint is resumed only when complete: the HF Trainer writes `trainer_state.json` last, PPO writes its
  state file atomically, so a folder a SIGKILL cut short is skipped and the one before it is used.
- Before resuming, every file of the checkpoint is read back (JSON parses, safetensors sizes match their header,
  torch zip archives pass their CRC check); a damaged one is a one-line `CorruptCheckpoint` naming the file.
- A non-finite loss or gradient stops the run (`NonFiniteLoss`) before the optimizer applies it, so no NaN weights
  reach a checkpoint, a model folder or a model row; the caller marks the run failed with the message.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "trainer_state.json"  # written last by the HF Trainer and by the PPO loop
_STEP = re.compile(r"^checkpoint-(\d+)$")


class CorruptCheckpoint(ValueError):
    """A checkpoint file that does not read back."""


class NonFiniteLoss(ValueError):
    """The loss (or its gradients) became NaN or infinite."""


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders holding the marker that is written last, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _STEP.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError(f"header of {n} bytes in a file of {size}")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"tensors end at byte {8 + n + end}, the file has {size}")


def _check_torch_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"member {bad} fails its CRC check")


def check_checkpoint(folder: Path) -> None:
    """Read back every file of a checkpoint; `CorruptCheckpoint` naming the first one that does not."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors":
                _check_safetensors(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                _check_torch_zip(path)
        except (ValueError, OSError, zipfile.BadZipFile, KeyError, TypeError, UnicodeDecodeError) as e:
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise CorruptCheckpoint(
                f"{path}: corrupt checkpoint file ({reason}); delete {Path(folder).name} to resume from the "
                "checkpoint before it, or start a new run without --resume") from e


def resume_checkpoint(run_dir: Path, resume_from: int | None) -> str | None:
    """The newest complete checkpoint of `run_dir`, checked, for `resume_from_checkpoint` (None: a fresh run)."""
    if resume_from is None:
        return None
    found = complete_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"--resume: run {resume_from} left no complete checkpoint in {run_dir}")
    check_checkpoint(found[-1])
    return str(found[-1])


def check_finite(what: str, value: float, step: int) -> None:
    """`NonFiniteLoss` when `value` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"training stopped at step {step}: {what} is {value} (NaN or infinite); nothing was saved from this "
            "step. Lower learning_rate, or check the data and the starting model")


def finite_loss_callback() -> Any:
    """A TrainerCallback that stops the run at the first non-finite gradient (before the update) or logged loss."""
    import torch
    from transformers import TrainerCallback

    class FiniteLoss(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
            if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
                check_finite("the loss or its gradient", float("nan"), state.global_step + 1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "eval_loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, int | float):
                    check_finite(key, float(value), state.global_step)

    return FiniteLoss()
