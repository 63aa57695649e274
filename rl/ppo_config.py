"""The PPO config: one dataclass, each field with help text, checked in `__post_init__`; read from `[ppo]` in
rankloop.toml, then `--config FILE`, then flags (rl.config.load_section).

`algo` picks the trainer: our PPO (rl/ppo_train.py), or TRL's RLOO or GRPO (rl/rloo_grpo.py). The fields marked
"(ppo only)" have no counterpart in RLOO/GRPO (no value head, no GAE, a fixed KL coefficient)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rl.config import QUANTIZATION_HELP, PolicyConfigError, check_quantization, need
from training.config import check_bounds, option, shared
from training.models import DEFAULT_POLICY

ALGOS = ("ppo", "rloo", "grpo")


@dataclass
class PPOTrainingConfig:
    algo: str = option("ppo", choices=ALGOS, help=(
        "'ppo' (ours: value head, GAE, adaptive KL), or TRL's 'rloo' (RLOOTrainer: leave-one-out baseline over "
        "num_generations samples per prompt) or 'grpo' (GRPOTrainer: group-normalised advantages); all three "
        "score with the reward model."))
    policy: str = option(DEFAULT_POLICY, (
        "Policy to start from (workspace model, folder or hub id); also the KL reference (adapters disabled)."))
    reward: str = option("", "Reward model that scores responses (default: the newest).")
    name: str = option("", "Name of the new policy row (default: <algo>-run<ID>).")
    splits: list[str] = field(default_factory=lambda: ["train"], metadata={"help": (
        "Sample rollouts on prompts of these splits (empty: all prompts).")})
    max_prompts: int = option(0, "Use at most this many prompts (0: all); bounds a run.", ge=0)
    max_steps: int = option(100, "PPO iterations (one rollout batch + its updates each).", ge=1)
    rollout_batch_size: int = option(16, (
        "Prompts per iteration (ppo: one response each; rloo/grpo: num_generations each)."), ge=1)
    num_generations: int = option(4, (
        "rloo/grpo: responses sampled per prompt, compared with each other (TRL: 2 for RLOO, 8 for GRPO)."),
        only=("rloo", "grpo"))
    num_minibatches: int = option(2, (
        "ppo: minibatches (one update each) per epoch over a rollout batch; rloo/grpo: micro-batches accumulated "
        "into the iteration's single update."), ge=1)
    ppo_epochs: int = option(4, "Passes over each rollout batch (ppo only).", ge=1, only=("ppo",))
    max_new_tokens: int = option(64, "Longest response in tokens.", ge=1)
    max_prompt_length: int = option(256, "Prompts keep their last N tokens.", ge=1)
    temperature: float = option(1.0, (
        "Sampling temperature; log-probs are taken at the same temperature so the ratio stays consistent."), gt=0)
    learning_rate: float = option(1e-5, "AdamW learning rate (policy LoRA + value head).", flag="--lr", gt=0, lt=1)
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", gt=0)
    cliprange: float = option(0.2, "PPO policy ratio clip.", gt=0)
    cliprange_value: float = option(0.2, "PPO value clip around the rollout's values (ppo only).", gt=0,
                                    only=("ppo",))
    vf_coef: float = option(0.1, "Weight of the value loss (ppo only).", ge=0, only=("ppo",))
    gamma: float = option(1.0, "Discount (1: undiscounted, as in InstructGPT; ppo only).", gt=0, le=1, only=("ppo",))
    lam: float = option(0.95, "GAE lambda (ppo only).", ge=0, le=1, only=("ppo",))
    init_kl_coef: float = option(0.05, (
        "Initial KL penalty coefficient beta (rloo/grpo: TRL's fixed `beta`; 0 drops the reference)."), ge=0)
    adaptive_kl: bool = option(True, "Adapt beta towards target_kl (Ziegler et al.; ppo only).", only=("ppo",))
    target_kl: float = option(6.0, "Target KL per response for the adaptive controller (nats, summed over tokens; "
                                   "ppo only).", gt=0, only=("ppo",))
    kl_horizon: int = option(10000, "Adaptive KL horizon (sequences; ppo only).", ge=1, only=("ppo",))
    whiten_rewards: bool = option(False, (
        "Whiten per-token rewards (keeping their mean) before GAE; advantages are always whitened (ppo only)."),
        only=("ppo",))
    missing_eos_penalty: float = option(1.0, "Subtracted from the score of a response that never emits EOS (0: none).",
                                        ge=0)
    lora: bool = field(default=True, metadata={"help": "Train LoRA adapters on the policy (else the full model)."})
    lora_r: int = shared("lora_r")
    lora_alpha: int = option(32, "LoRA scaling numerator.", ge=1)
    lora_target_modules: list[str] = field(default_factory=list, metadata={"help": (
        "LoRA modules (empty: all-linear).")})
    quantization: str = field(default="none", metadata={"help": QUANTIZATION_HELP})
    save_steps: int = option(25, "Checkpoint (for --resume) every N iterations.", ge=1)
    logging_steps: int = option(1, "Log to TensorBoard every N iterations.", ge=1)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"help": (
        "'tensorboard' or [] (none).")})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, shuffling and initialisation."})
    device: str | None = shared("device")
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast (default: on with CUDA, off on CPU)."})
    gradient_checkpointing: bool | None = shared("gradient_checkpointing")

    def __post_init__(self) -> None:
        check_bounds(self, PolicyConfigError)
        need(bool(self.policy.strip()), "policy", "must name a model")
        need(self.algo == "ppo" or self.num_generations >= 2, "num_generations",
             "must be >= 2: rloo/grpo compare the responses to one prompt with each other")
        check_quantization(self.quantization, self.lora)
        need(self.rollout_batch_size % self.num_minibatches == 0, "num_minibatches",
             f"must divide rollout_batch_size ({self.rollout_batch_size})")
        need(set(self.report_to) <= {"tensorboard", "none"}, "report_to", "only 'tensorboard' is supported")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def minibatch_size(self) -> int:
        return self.rollout_batch_size // self.num_minibatches
