"""Where models run, and the per-device training defaults, with why each differs from TRL's.

One resolver (`resolve_device`) checks what was asked for; `pick_device` adds the dtype for sampling and scoring
(CUDA: bfloat16 when the GPU has it; else float32) and `training_defaults` the trainers' precision and gradient
checkpointing.

TRL's defaults are tuned for a GPU: bf16 on, gradient checkpointing on. On a CPU without native bf16 (no
AVX-512-BF16 / AMX) bf16 is emulated: one reward step measured 468 s with bf16 against 21 s in float32 on an AVX2
machine. On a CPU with AVX-512-BF16 (AMD EPYC, 2 cores) bf16 autocast is fast instead: all-MiniLM-L6-v2 trained at
8.3 pairs/s against 3.8 in float32 (`scripts/bench/reward_throughput.py --trl-steps 6 [--set bf16=true]`), but it
learned worse: 0.588 on the HH test pairs against 0.618-0.640 for float32 over three seeds
(`scripts/reward_real_data.py --data hh --set bf16=true`). Gradient checkpointing recomputes the forward pass to
save memory that a small model does not need: it cost ~40% per step on small models here. So: CUDA gets bf16 (when
the GPU supports it) and checkpointing only for models over 1B parameters; every CPU gets float32 and no
checkpointing (`bf16 = true` in a config when speed matters more than the last points of accuracy).

Except where the activations of one batch are large: a trainer that says how many positions a micro-batch holds
(`activation_values`) gets checkpointing on any device when the activations kept for the backward pass would take
over an eighth of the device's memory (`ACTIVATION_SHARE`). A policy trainer's batch is large: DPO with SmolLM2-135M,
8 pairs (16 sequences) of up to 512 tokens keeps ~10 GiB of float32 activations by this estimate; without
checkpointing (and with random batches and TRL's LM-head tiles) `scripts/bench/dpo_throughput.py`'s rankloop side
was seen at 19.3 GB resident (ps) on the 24 GB machine; with it (and the rest, issue 18) the bench measured a
6.8 GiB peak, and 2.4 GiB once `prefer_huge_pages` (below) stopped glibc's heap fragmenting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BIG_MODEL_PARAMS = 1_000_000_000  # above this, gradient checkpointing pays on a GPU
ACTIVATION_SHARE = 0.125  # checkpointing when one batch's kept activations would take more of the device's memory


def activation_values(model_config: Any, positions: int) -> int:
    """About how many activation values a decoder stack keeps for the backward pass of a micro-batch of `positions`
    (sequences x length) without checkpointing: per layer and position ~8 hidden-width tensors (norm outputs,
    attention q/k/v and output, residuals, the LoRA inputs among them) and 4 MLP-width ones (gate, up, activation,
    product). 0 for a config without those sizes. With checkpointing only each layer's input is kept (1 of ~12+)."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    layers, hidden = getattr(cfg, "num_hidden_layers", 0) or 0, getattr(cfg, "hidden_size", 0) or 0
    width = getattr(cfg, "intermediate_size", None) or 4 * hidden
    return int(positions) * layers * (8 * hidden + 4 * width)


# Why: on a CPU, glibc's malloc served torch's large blocks from its heap (after the first large free its mmap
# threshold rises to 32 MB), which fragmented: one DPO step of `scripts/bench/dpo_throughput.py`'s rankloop side
# (SmolLM2-135M, 8 pairs of up to 493 tokens, checkpointing on) peaked at 8.8 GB resident with ~1.2 GB of it live.
# torch's own switch THP_MEM_ALLOC_ENABLE=1 (page-aligned blocks, transparent huge pages advised for those of 2 MB
# and more) took the same step to 2.4 GB at the same speed; forcing every large block onto mmap
# (glibc.malloc.mmap_threshold=131072) reached 1.3 GB but made steps ~1.6x slower (page faults). Measured with
# /proc/self/status sampled every 50 ms, 2-core Xeon, quiet; docs/experiments.md has the commands.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Turn on torch's transparent-huge-page CPU allocation for this process (and the processes it starts) unless
    the environment already says otherwise (`THP_MEM_ALLOC_ENABLE=0` keeps it off) or the kernel has no THP.

    torch reads the variable once, at its first CPU allocation: call this before anything imports transformers or
    allocates a tensor (the `rankloop` command does it first thing). Returns whether the variable is now "1"."""
    import os
    import sys

    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    if sys.platform == "linux" and os.path.exists(thp):
        with open(thp) as f:
            if "[never]" not in f.read():
                os.environ.setdefault(HUGE_PAGES_ENV, "1")
    return os.environ.get(HUGE_PAGES_ENV) == "1"


def device_memory(device: str) -> int:
    """Bytes of memory of `device` ("cpu": the machine's RAM; "cuda:N": the GPU's; "mps": what Metal recommends)."""
    import os

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(int(device.split(":")[1]) if ":" in device else 0).total_memory
    if device == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_device(prefer: str | None = None) -> str:
    """"cuda:N", "mps" or "cpu": CUDA when present (or asked for), else CPU; asking for a device that is absent is
    an error rather than a silent fall back to the CPU."""
    import torch

    want = (prefer or "").strip().lower() or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {prefer!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
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


@dataclass(frozen=True)
class DeviceChoice:
    """Where sampling and scoring run: the device, the dtype of weights and activations, and a label."""

    device: str  # "cuda:0", "cpu" or "mps": what `.to()` takes
    dtype: Any  # torch.dtype
    name: str  # human-readable, e.g. "NVIDIA H100 (cuda:0, bfloat16)"
    bf16: bool  # bf16 weights / autocast pay here

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype_name, "name": self.name}


def pick_device(prefer: str | None = None) -> DeviceChoice:
    """CUDA + bfloat16 when available (or asked for; float32 on a GPU without bf16: fp16 overflows too easily to be
    a default), else CPU or MPS + float32. `prefer`: None (best available), "cpu", "cuda", "cuda:N" or "mps"."""
    import torch

    device = resolve_device(prefer)
    if device.startswith("cuda"):
        bf16 = torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
        index = int(device.split(":")[1])
        return DeviceChoice(device, dtype, f"{torch.cuda.get_device_name(index)} ({device}, "
                                           f"{str(dtype).removeprefix('torch.')})", bf16)
    if device == "mps":
        return DeviceChoice("mps", torch.float32, "Apple GPU (mps, float32)", False)
    threads = torch.get_num_threads()
    return DeviceChoice("cpu", torch.float32, f"CPU ({threads} thread{'' if threads == 1 else 's'}, float32)", False)


@dataclass(frozen=True)
class TrainingDevice:
    device: str  # "cpu", "cuda:0", "mps"
    bf16: bool
    gradient_checkpointing: bool
    reasons: dict[str, str]  # field -> why this value (recorded on the run row)

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "bf16": self.bf16, "gradient_checkpointing": self.gradient_checkpointing,
                "reasons": self.reasons}


def training_defaults(prefer: str | None, n_params: int, bf16: bool | None = None,
                      gradient_checkpointing: bool | None = None, activations: int = 0) -> TrainingDevice:
    """Device, precision and checkpointing for a model of `n_params` whose micro-batch keeps about `activations`
    values for the backward pass (`activation_values`; 0: not said); explicit values win over defaults."""
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
    kept = activations * (2 if bf16 else 4)  # bytes
    if gradient_checkpointing is None:
        share = kept / device_memory(device) if kept else 0.0
        gradient_checkpointing = (cuda and n_params >= BIG_MODEL_PARAMS) or share > ACTIVATION_SHARE
        reasons["gradient_checkpointing"] = (
            "on: CUDA and a model over 1B parameters" if cuda and n_params >= BIG_MODEL_PARAMS else
            f"on: a batch would keep ~{kept / 2**30:.1f} GiB of activations without it ({share:.0%} of this "
            f"device's memory, over {ACTIVATION_SHARE:.1%})" if gradient_checkpointing else
            f"off: {n_params / 1e6:.0f}M parameters fit in memory"
            + (f" (a batch keeps ~{kept / 2**30:.1f} GiB of activations)" if kept else "")
            + "; recomputation would cost ~40% per step (TRL's default is on)")
    else:
        reasons["gradient_checkpointing"] = "set in the config"
    return TrainingDevice(device, bool(bf16), bool(gradient_checkpointing), reasons)
