"""Per-device training defaults for the reward model, and why each differs from TRL's.

TRL's `RewardConfig` defaults are tuned for a GPU: bf16 on, gradient checkpointing on. On a CPU without native
bf16 (no AVX-512-BF16 / AMX) bf16 is emulated: one reward step measured 468 s with bf16 against 21 s in float32 on
an AVX2 machine. On a CPU with AVX-512-BF16 (AMD EPYC, 2 cores) bf16 autocast is fast instead: all-MiniLM-L6-v2
trained at 8.3 pairs/s against 3.8 in float32 (`scripts/bench/reward_throughput.py --trl-steps 6 [--set
bf16=true]`), but it learned worse: 0.588 on the HH test pairs against 0.618-0.640 for float32 over three seeds
(`scripts/reward_real_data.py --data hh --set bf16=true`). Gradient checkpointing recomputes the forward pass to
save memory that a small model does not need: it cost ~40% per step on small models here. So: CUDA gets bf16
(when the GPU supports it) and checkpointing only for backbones over 1B parameters; every CPU gets float32 and no
checkpointing (`bf16 = true` in the config when speed matters more than the last points of accuracy).

`rl/` has its own `pick_device` for sampling; this module sits on the `reward/` floor so that `reward/` never
imports `rl/` (ARCHITECTURE: imports only go down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BIG_MODEL_PARAMS = 1_000_000_000  # above this, gradient checkpointing pays on a GPU


@dataclass(frozen=True)
class TrainingDevice:
    device: str  # "cpu", "cuda:0", "mps"
    bf16: bool
    gradient_checkpointing: bool
    reasons: dict[str, str]  # field -> why this value (recorded on the run row)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "bf16": self.bf16, "gradient_checkpointing": self.gradient_checkpointing,
                "reasons": self.reasons}


def resolve_device(prefer: str | None = None) -> str:
    """CUDA when present (or asked for), else CPU; asking for a device that is absent is an error."""
    import torch

    want = (prefer or "").strip().lower() or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {prefer!r} asked for, but torch sees no CUDA GPU")
        index = int(want.split(":", 1)[1]) if ":" in want else torch.cuda.current_device()
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"device: {prefer!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return f"cuda:{index}"
    if want == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device: 'mps' asked for, but torch sees no Apple GPU")
        return "mps"
    if want == "cpu":
        return "cpu"
    raise ValueError(f"device: unknown {prefer!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")


def training_defaults(prefer: str | None, n_params: int, bf16: bool | None = None,
                      gradient_checkpointing: bool | None = None) -> TrainingDevice:
    """Device, precision and checkpointing for a backbone of `n_params`; explicit values win over defaults."""
    import torch

    device = resolve_device(prefer)
    reasons: dict[str, str] = {}
    cuda = device.startswith("cuda")
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
        reasons["bf16"] = ("CUDA with native bf16" if bf16 else
                           "float32: bf16 is emulated on this device (TRL default bf16=True is ~20x slower on CPU)")
    else:
        reasons["bf16"] = "set in the config"
    if bf16 and not cuda:
        reasons["bf16"] += " (warning: emulated on this device, expect very slow steps)"
    if gradient_checkpointing is None:
        gradient_checkpointing = cuda and n_params >= BIG_MODEL_PARAMS
        reasons["gradient_checkpointing"] = (
            "on: CUDA and a backbone over 1B parameters" if gradient_checkpointing else
            f"off: {n_params / 1e6:.0f}M parameters fit in memory; recomputation would cost ~40% per step "
            "(TRL's default is on)")
    else:
        reasons["gradient_checkpointing"] = "set in the config"
    return TrainingDevice(device, bool(bf16), bool(gradient_checkpointing), reasons)
