"""Where models run: CUDA with bfloat16 when there is a GPU, CPU with float32 otherwise.

Settings that only pay on a GPU (bf16 autocast, gradient checkpointing on small models) are read from the
`DeviceChoice`, never hard-coded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda", "cuda:1", "cpu" or "mps": what `.to()` takes
    dtype: Any  # torch.dtype for weights and activations
    name: str  # human-readable, e.g. "NVIDIA H100 (cuda, bfloat16)"
    bf16: bool  # bf16 weights / autocast pay here
    gradient_checkpointing: bool  # trade compute for memory: only worth it on a GPU

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype_name, "name": self.name}


def pick_device(prefer: str | None = None) -> DeviceChoice:
    """CUDA + bfloat16 when available (or asked for), else CPU + float32.

    `prefer` is None (best available), "cpu", "cuda", "cuda:N" or "mps"; asking for a device that is not there
    is an error rather than a silent fall back to the CPU.
    """
    import torch

    want = (prefer or "").strip().lower() or None
    if want is None:
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
        index = int(want.split(":", 1)[1]) if ":" in want else torch.cuda.current_device()
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"device {prefer!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        bf16 = torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32  # fp16 overflows too easily to be a default
        label = f"{torch.cuda.get_device_name(index)} (cuda:{index}, {str(dtype).removeprefix('torch.')})"
        return DeviceChoice(f"cuda:{index}", dtype, label, bf16, gradient_checkpointing=True)
    if want == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' asked for, but torch sees no Apple GPU")
        return DeviceChoice("mps", torch.float32, "Apple GPU (mps, float32)", False, gradient_checkpointing=False)
    if want == "cpu":
        threads = torch.get_num_threads()
        label = f"CPU ({threads} thread{'' if threads == 1 else 's'}, float32)"
        return DeviceChoice("cpu", torch.float32, label, False, gradient_checkpointing=False)
    raise ValueError(f"unknown device {prefer!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
