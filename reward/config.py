"""The reward-model training config: one dataclass, each field with help text, validated in `__post_init__`.

It is read from the `[reward]` section of `rankloop.toml` (and of a `--config FILE`), then from CLI flags. Fields
left at `None` are chosen per device when training starts (see `training.device.training_defaults`), and the
chosen values are recorded on the run row. The TOML machinery is training/config.py's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reward.pooling import POOLINGS
from training.config import (
    TrainerConfig,
    check_bounds,
    dataclass_from_dict,
    load_toml_section,
    option,
    render_toml_section,
)
from training.models import DEFAULT_POLICY

DEFAULT_BACKBONE = DEFAULT_POLICY  # with method "probe": README "Reward models on real data"


class RewardConfigError(ValueError):
    """A bad reward config: the message names the file (when there is one), the section and the field."""


@dataclass
class RewardTrainingConfig(TrainerConfig):
    # data (the filters, the schedule, LoRA's size, the device (None: chosen per device at start, recorded on the
    # run row) and checkpoints are training.config.TrainerConfig's)
    name: str = option("", "Name of the new reward model row (default: reward-run<ID>).")
    base: str = option(DEFAULT_BACKBONE, (
        "Backbone: a workspace model name, a local folder, a hub id, or a built-in offline backbone "
        f"('all-minilm-l6-v2', '{DEFAULT_BACKBONE}'). Any causal LM or encoder; a 1-output head is added."))
    loss: str = option("pairwise", choices=("pairwise", "ranking"), help=(
        "'pairwise': each ranking expanded into independent (better, worse) pairs, Bradley-Terry on each, ties "
        "dropped; 'ranking': one Davidson-Luce likelihood per reviewer's whole ranking (Plackett-Luce over its "
        "groups, a tie chosen together; reward/ranking_loss.py), ties and an edited answer included. The same on "
        "two answers without a tie. Held-out accuracy is on pairs either way."))
    margin: bool = option(False, (
        "Bradley-Terry with a margin from the rank gap: loss -log sigmoid(r_c - r_r - m), "
        "m = margin_scale * (gap - 1), gap = how many rank groups apart (adjacent: 1, so no margin)."),
        flag="--margin/--no-margin")
    margin_scale: float = option(1.0, "Reward units of margin per extra rank group.", ge=0)
    eval_fraction: float = option(0.1, (
        "Share of prompts held out for evaluation and early stopping; the split is by prompt (no prompt in both)."),
        gt=0, lt=1)
    max_pairs: int = option(0, "Train on at most this many pairs (0: all); bounds a run.", ge=0)
    max_length: int = option(512, (
        "Longest prompt + response in tokens; longer prompts lose their beginning (TRL drops such pairs instead)."),
        ge=16)
    # model
    method: str = option("probe", choices=("auto", "lora", "full", "probe"), help=(
        "'probe' (the default: the backbone frozen; a linear Bradley-Terry reward on one layer's states averaged "
        "over the response, fitted by L-BFGS: forward passes only, see reward/probe.py), or fine-tuning through TRL's "
        "RewardTrainer: 'lora' (adapters on the backbone, the head trained in full via peft modules_to_save), "
        "'full', 'auto' (full below 100M parameters, where LoRA saves little and learns slower; LoRA above)."))
    probe_layer: int = field(default=0, metadata={"help": (
        "method 'probe': the layer read (0: the middle one, k: layer k, -1: the last).")})
    probe_layers: list[int] = option([], (
        "method 'probe': several layers read side by side, each averaged over the response and the means "
        "concatenated, e.g. [11, 15, 19] (0: the middle, -1: the last); empty (the default): probe_layer alone."))
    probe_penalties: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0], metadata={"help": (
        "method 'probe': L2 penalties tried; the best by cross-validation on the train pairs is kept.")})
    probe_folds: int = option(5, "method 'probe': cross-validation folds.", ge=2)
    probe_cv: str = option("pairs", choices=("pairs", "prompts"), help=(
        "method 'probe': what the cross-validation folds are made of: 'pairs' (the default) or whole 'prompts', so "
        "the penalty is checked on prompts the fit never saw (as on new debates); loss 'pairwise' only."))
    probe_precision: str = option("float32", choices=("float32", "int8"), help=(
        "method 'probe': the frozen backbone's arithmetic, 'float32' or 'int8' (dynamic int8 quantization of its "
        "linear layers, CPU only: ~3x faster, ~0.03 less accurate on HH). The probe records it; scoring computes "
        "its features the same way."))
    pooling: str = option("own", choices=POOLINGS, help=(
        "How a text becomes one score: 'own' (the architecture's: [CLS] pooler for encoders, last token for "
        "decoders) or 'response_mean' (BERT-style encoders only: the mean of the response tokens, prompt and "
        "response encoded as a pair; not better on HH here, see reward/pooling.py)."))
    lora_target_modules: list[str] = field(default_factory=list, metadata={"help": (
        "Module names LoRA adapts (empty: peft's default for the architecture, e.g. q_proj/v_proj, query/value).")})
    # optimisation
    learning_rate: float = option(1e-4, "AdamW peak learning rate (TRL's default).", flag="--lr", gt=0, lt=1)
    per_device_eval_batch_size: int = option(16, "Pairs per evaluation batch.", ge=1)
    warmup_ratio: float = option(0.05, "Share of steps with a linear learning-rate warmup.", ge=0, lt=1)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    center_rewards_coefficient: float | None = option(0.01, (
        "Reward centering (Eisenstein et al. 2023): adds coef * mean((r_c + r_r)^2) so scores stay near 0 for PPO."),
        ge=0)
    seed: int = field(default=0, metadata={"help": "Seed for the head's initialisation, shuffling and the split."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch pairs of similar length (less padding)."})
    # bookkeeping
    eval_steps: int = option(50, "Evaluate held-out accuracy every N steps and at the end.", ge=1)
    logging_steps: int = option(10, "Log loss and accuracy every N steps.", ge=1)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"help": (
        "Where logs go: 'tensorboard', 'wandb', 'mlflow' (installed separately), or [] for none.")})

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise RewardConfigError(f"{name}: {message}")

        check_bounds(self, RewardConfigError)
        need(bool(self.base.strip()), "base", "must name a model")
        need(bool(self.probe_penalties) and all(x > 0 for x in self.probe_penalties), "probe_penalties",
             "must be one or more numbers > 0")
        need(len(set(self.probe_layers)) == len(self.probe_layers), "probe_layers",
             f"must not repeat a layer, got {self.probe_layers}")
        need(not (self.probe_cv == "prompts" and self.loss == "ranking"), "probe_cv",
             "'prompts' folds are for loss 'pairwise' (loss 'ranking' folds whole rankings already)")
        need(not (self.method == "probe" and self.margin), "margin",
             "method 'probe' (the default) has no margin term: set method = 'full' or 'lora' with it")
        need(not (self.loss == "ranking" and self.margin), "margin",
             "loss 'ranking' has no margin term (the rank gap is in the ranking itself): set margin = false")
        known = {"tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "clearml", "none"}
        bad = sorted(set(self.report_to) - known)
        need(not bad, "report_to", f"unknown {bad} (known: {', '.join(sorted(known))})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unused(self, given: list[str] | tuple[str, ...] | set[str]) -> list[str]:
        """The fields among `given` (set on a command line) that this config's method never reads."""
        return [name for name in given if self.method == "probe" and name not in PROBE_READS]


# What method 'probe' reads: the data selection, the probe's own fields and the device. The other fields steer
# fine-tuning only (steps, epochs, learning rate, margin, LoRA, logging...).
PROBE_READS = frozenset({
    "base", "name", "loss", "aggregate", "rounds", "models", "reviewers", "splits", "min_agreement", "edited_first",
    "exclude_flagged", "eval_fraction", "max_pairs", "max_length", "method", "probe_layer", "probe_layers",
    "probe_penalties", "probe_folds", "probe_cv", "probe_precision", "seed", "device"})


def parse_assignment(text: str) -> tuple[str, Any]:
    """`--set key=value` from the command line: the value is read as TOML (`lr=3e-5`, `rounds=[1,2]`), else as text."""
    import tomllib

    if "=" not in text:
        raise RewardConfigError(f"command line: --set {text!r}: expected FIELD=VALUE")
    key, value = (s.strip() for s in text.split("=", 1))
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


# The [reward] section.


def config_from_dict(raw: dict[str, Any], base: RewardTrainingConfig | None = None,
                     where: str = "") -> RewardTrainingConfig:
    """A reward config from `base` (default: the defaults) updated with `raw`."""
    return dataclass_from_dict(RewardTrainingConfig, raw, base, where, RewardConfigError)


def load_reward_config(workspace_extra: dict[str, Any], config_path: Path, config_file: str | Path | None = None,
                       overrides: dict[str, Any] | None = None) -> RewardTrainingConfig:
    """Defaults, then the workspace's `[reward]` section, then `--config FILE`'s `[reward]`, then CLI overrides."""
    return load_toml_section(RewardTrainingConfig, "reward", workspace_extra, config_path, config_file, overrides,
                             RewardConfigError)


def render_reward_section(cfg: RewardTrainingConfig | None = None) -> str:
    """The `[reward]` TOML section with each field's help as a comment (None fields commented out)."""
    return render_toml_section(cfg or RewardTrainingConfig(), "reward")
