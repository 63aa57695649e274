"""Configs of the policy trainers (DPO, SFT, KTO): one dataclass each, every field with help text, checked in
`__post_init__`, read like the reward config: defaults < `[dpo]`/`[sft]` in rankloop.toml < `--config FILE` <
CLI flags. Fields left at `None` are chosen per device when training starts and recorded on the run row.

The loader is generic (`load_section(cls, "dpo", ...)`) so that the PPO config (rl/ppo_config.py) shares it.
`SamplingParams` (also the `[generation]` section of rankloop.toml) and `RoundConfig` (`rankloop round next`) are
declared here too, so the fields of sampling exist once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from training.config import (
    TrainerConfig,
    check_bounds,
    dataclass_from_dict,
    field_type,
    load_toml_section,
    option,
    render_toml_section,
    shared,
)
from training.models import DEFAULT_POLICY

DPO_LOSSES = ("sigmoid", "ipo", "robust", "hinge", "sigmoid_norm", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
              "apo_zero", "apo_down", "aot", "discopop", "sft")
QUANTIZATIONS = ("none", "4bit")
SAMPLING_ENGINES = ("hf", "vllm")
QUANTIZATION_HELP = (
    "'none', or '4bit' for QLoRA: the frozen base loaded in 4-bit NF4 through bitsandbytes (double quantization, "
    "bf16 compute), LoRA adapters trained on top. CUDA only (bitsandbytes' 4-bit kernels); needs lora and "
    "`pip install 'rankloop[gpu]'`. The saved policy is merged into a bf16 copy of the base.")
T = TypeVar("T")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}: must be " + (f"between {low} and {high}" if high is not None else f">= {low}")
                         + f", got {value}")


@dataclass
class SamplingParams:
    """How candidates are sampled (rl/sampling.py); also the `[generation]` section of rankloop.toml."""

    k: int = option(4, "Candidates per prompt (one comparison of k responses).", ge=2, le=16)
    max_new_tokens: int = option(128, "Longest response, in tokens.", ge=1)
    temperature: float = option(0.8, "Sampling temperature.", gt=0)
    top_p: float = option(0.95, "Nucleus sampling mass.", gt=0, le=1)
    batch_size: int = option(16, "Sequences decoded together (prompts x k).", ge=1)
    seed: int = option(0, "Base seed; batch b samples with seed + b (each batch's seed is stored with its "
                          "responses).", ge=0)
    top_k: int = option(0, "Keep only the k most likely tokens; 0 turns it off.", ge=0)
    engine: str = option("hf", (
        "What samples: 'hf' (transformers' generate; the CPU default) or 'vllm' (vLLM on CUDA, a LoRA policy served "
        "through vLLM's LoRA support; needs `pip install 'rankloop[gpu]'`). Same seeds, parameters and lineage "
        "stored either way."), choices=SAMPLING_ENGINES)

    def __post_init__(self) -> None:  # the numbers' types (this is built from flags and code, not only TOML)
        for f in fields(self):
            value, want = getattr(self, f.name), field_type(type(self), f.name)
            if want in (int, float) and (isinstance(value, bool) or not isinstance(value, int if want is int
                                                                                  else int | float)):
                raise ValueError(f"{f.name}: must be {'an integer' if want is int else 'a number'}, got {value!r}")
        check_bounds(self, ValueError)

    @property
    def prompts_per_batch(self) -> int:
        return max(1, self.batch_size // self.k)


@dataclass
class RoundConfig(SamplingParams):
    """`rankloop round next` (rl/rounds.py): the sampling fields above, and which prompts, for how many reviewers."""

    policy: str | None = option(None, "Policy to sample from (default: the newest policy).")
    prompts: int = option(32, "Prompts to queue (one comparison each).", ge=1)
    mix_previous: bool = option(False, "One candidate per comparison from the policy's parent.", flag="--mix-previous")
    split: str | None = option(None, "Only prompts of this split.")
    required_reviewers: int = option(1, "Reviewers wanted per comparison.", flag="--reviewers", ge=1)
    device: str | None = shared("device")


@dataclass
class PolicyEvalConfig:
    """`rankloop eval policy` (rl/evaluate.py: evaluate_policy): how both policies are sampled on held-out prompts."""

    max_prompts: int = option(32, "Held-out prompts to sample on.", ge=1)
    k: int = option(2, "Samples per prompt from each policy.", ge=1)
    max_new_tokens: int = option(64, "Longest response, in tokens.", ge=1)
    temperature: float = option(0.7, "Sampling temperature.", gt=0)
    seed: int = option(0, "Sampling seed.", ge=0)
    samples_shown: int = option(5, "Samples shown in the report's table.", ge=0)
    device: str | None = shared("device")

    __post_init__ = SamplingParams.__post_init__


class PolicyConfigError(ValueError):
    """A bad policy-trainer config: the message names the file (when there is one), the section and the field."""


def need(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise PolicyConfigError(f"{name}: {message}")


def check_quantization(quantization: str, lora: bool) -> None:
    """The config-time half of the QLoRA checks (the device and bitsandbytes are checked when a run starts)."""
    need(quantization in QUANTIZATIONS, "quantization", f"must be 'none' or '4bit', got {quantization!r}")
    need(quantization == "none" or lora, "quantization",
         "'4bit' (QLoRA) trains LoRA adapters on a frozen 4-bit base: it needs lora = true")


@dataclass
class PolicyTrainingConfig(TrainerConfig):
    """What DPO and SFT share: data filters, LoRA, optimisation, device and bookkeeping."""

    policy: str = option(DEFAULT_POLICY, (
        "Policy to start from: a workspace model name (an earlier policy), a local folder or a hub id. "
        "A LoRA policy is merged first; the reference is this policy (LoRA adapters disabled)."))
    name: str = option("", "Name of the new policy row (default: <kind>-run<ID>).")
    eval_fraction: float = option(0.1, (
        "Share of prompts held out (split by prompt, no prompt on both sides) for evaluation and early stopping."),
        gt=0, lt=1)
    max_pairs: int = option(0, "Train on at most this many rows (0: all); bounds a run.", ge=0)
    max_length: int = option(512, "Longest prompt + response in tokens.", ge=16)
    lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (merged into the saved policy)."})
    lora_target_modules: list[str] = field(default_factory=list, metadata={"help": (
        "Module names LoRA adapts (empty: 'all-linear').")})
    quantization: str = field(default="none", metadata={"help": QUANTIZATION_HELP})
    learning_rate: float | None = option(None, (
        "AdamW learning rate (default: 5e-5 with LoRA, 5e-7 for full fine-tuning with DPO, 1e-4 with LoRA and 2e-5 "
        "in full with SFT)."), flag="--lr", gt=0, lt=1)
    per_device_eval_batch_size: int = option(8, "Rows per evaluation batch.", ge=1)
    warmup_ratio: float = option(0.0, "Share of steps with a linear learning-rate warmup.", ge=0, lt=1)
    seed: int = field(default=0, metadata={"help": "Seed for LoRA initialisation, shuffling and the split."})
    eval_steps: int = option(50, "Evaluate on the held-out prompts every N steps.", ge=1)
    save_steps: int = option(50, "Checkpoint (for --resume) every N steps.", ge=1)
    logging_steps: int = option(10, "Log every N steps.", ge=1)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"help": (
        "Where logs go: 'tensorboard', 'wandb', 'mlflow', or [] for none.")})

    def __post_init__(self) -> None:
        check_bounds(self, PolicyConfigError)
        need(bool(self.policy.strip()), "policy", "must name a model")
        check_quantization(self.quantization, self.lora)
        bad = sorted(set(self.report_to) - {"tensorboard", "wandb", "mlflow", "trackio", "none"})
        need(not bad, "report_to", f"unknown {bad}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def batch_positions(self) -> int:
        """Positions of the longest micro-batch the backward pass runs through (training/device.py sizes its
        activations to choose gradient checkpointing): a row each, up to max_length."""
        return self.per_device_train_batch_size * self.max_length


@dataclass
class DPOTrainingConfig(PolicyTrainingConfig):
    beta: float = option(0.1, (
        "Strength of the KL anchor to the reference: higher keeps the policy closer (TRL's default 0.1)."), gt=0)
    loss_type: list[str] = option(["sigmoid"], (
        "DPO loss(es): 'sigmoid' (DPO), 'ipo', 'robust' (with label_smoothing), 'hinge' (SLiC), 'sigmoid_norm' "
        "(length-normalised, SimPO-style log-probs), 'apo_zero', ... Several are summed with loss_weights."),
        flag="--loss", choices=DPO_LOSSES)
    loss_weights: list[float] = field(default_factory=list, metadata={"help": "Weights of the losses (empty: 1s)."})
    label_smoothing: float = option(0.0, (
        "Robust DPO / cDPO: assumed probability that a preference label is flipped."), ge=0, lt=0.5)
    precompute_ref_log_probs: bool | None = field(default=None, metadata={"help": (
        "Compute the reference log-probs once before training (default: when each pair is seen more than once, "
        "i.e. num_train_epochs > 1; otherwise it is the same number of forward passes, paid up front).")})
    group_by_length: bool = field(default=True, metadata={"help": (
        "Batch pairs of similar length (TRL pads a batch to its longest sequence: on 64 HH pairs at batch 8, 49% "
        "of the positions were padding in random batches, 23% in these). The batches are drawn in a seeded random "
        "order, the widest first; the same order every epoch.")})
    sft_replay: float = option(0.0, (
        "Weight of an NLL term on the chosen responses (RPO-style replay against forgetting); 0: off."), ge=0)
    replay: float = option(0.0, (
        "Replay against forgetting: the share of the training rows drawn from earlier rounds' pairs (rounds below "
        "the lowest of `rounds`, under the same other filters; all of them for training, none held out), added to "
        "the selected rounds' rows and recorded in the data snapshot. 0: off; with every round selected there is "
        "nothing earlier to add."), ge=0, lt=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = sorted(set(self.loss_type) - set(DPO_LOSSES))
        need(bool(self.loss_type) and not bad, "loss_type", f"unknown {bad} (known: {', '.join(DPO_LOSSES)})")
        need(not self.loss_weights or len(self.loss_weights) == len(self.loss_type), "loss_weights",
             "needs one weight per loss_type")

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (5e-5 if self.lora else 5e-7)

    @property
    def batch_positions(self) -> int:
        """Chosen and rejected of every pair go through the policy together (TRL concatenates them)."""
        return 2 * self.per_device_train_batch_size * self.max_length

    @property
    def effective_precompute(self) -> bool:
        if self.precompute_ref_log_probs is not None:
            return self.precompute_ref_log_probs
        return self.num_train_epochs > 1 and self.max_steps == -1


@dataclass
class SFTTrainingConfig(PolicyTrainingConfig):
    source: str = option("both", (
        "What to imitate: 'edits' (reviewers' rewritten answers), 'top' (each judgment's single best response), "
        "or 'both'. The loss is on the response tokens only."), choices=("edits", "top", "both"))

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (1e-4 if self.lora else 2e-5)


KTO_LOSSES = ("kto", "apo_zero_unpaired")


@dataclass
class KTOTrainingConfig(PolicyTrainingConfig):
    """`rankloop train kto` (rl/kto.py): TRL's KTOTrainer on unpaired thumbs (store.labels: a ranking's top group
    desirable, its bottom group and every answer of an "all bad" judgment undesirable)."""

    beta: float = option(0.1, (
        "Strength of the KL anchor to the reference: higher keeps the policy closer (TRL's default 0.1)."), gt=0)
    desirable_weight: float | None = option(None, (
        "Weight of the desirable rows' loss (default: balanced from the training labels, so that desirable weight "
        "x desirable rows = undesirable weight x undesirable rows, the KTO paper's advice)."), gt=0)
    undesirable_weight: float | None = option(None, (
        "Weight of the undesirable rows' loss (default: balanced from the training labels, see desirable_weight)."),
        gt=0)
    loss_type: str = option("kto", (
        "'kto' (KL-anchored, the KL estimated from mismatched prompt-answer pairs in each batch: needs batches of "
        "2 or more) or 'apo_zero_unpaired' (no KL term)."), flag="--loss", choices=KTO_LOSSES)

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.loss_type != "kto" or self.per_device_train_batch_size >= 2, "per_device_train_batch_size",
             "KTO estimates its KL term from the other rows of a batch: it needs 2 or more (got "
             f"{self.per_device_train_batch_size}); or use loss_type = 'apo_zero_unpaired'")

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (5e-5 if self.lora else 5e-7)


def config_from_dict(cls: type[T], raw: dict[str, Any], base: T | None = None, where: str = "") -> T:
    """`cls` from `base` (default: the defaults) updated with `raw`; unknown or ill-typed fields are errors."""
    return dataclass_from_dict(cls, raw, base, where, PolicyConfigError)


def load_section(cls: type[T], section: str, workspace_extra: dict[str, Any], config_path: Path,
                 config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults, then the workspace's `[section]`, then `--config FILE`'s `[section]`, then CLI overrides."""
    return load_toml_section(cls, section, workspace_extra, config_path, config_file, overrides, PolicyConfigError)


def render_section(cls: type, section: str) -> str:
    """A `[section]` TOML block with each field's help as a comment (None fields commented out)."""
    return render_toml_section(cls(), section)
