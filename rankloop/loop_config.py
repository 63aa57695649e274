"""The loop's settings: `LoopConfig` (the `[loop]` section of rankloop.toml, then `--set FIELD=VALUE` and flags),
each field with help text, checked in `__post_init__`; `reward.X` / `dpo.X` / `kto.X` / `ppo.X` reach the trainers'
sections."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from rl.config import RoundConfig  # the loop samples each round as `round next` does, with its defaults
from training.config import check_bounds, option, shared
from training.models import DEFAULT_POLICY

if TYPE_CHECKING:
    from rankloop.workspace import Workspace

ALGOS = ("dpo", "kto", "ppo")
TRAINER_TABLES = ("reward", "dpo", "kto", "ppo")  # the trainers' sections `X.FIELD` reaches


class ReviewersNotDone(ValueError):
    """The reviewers did not finish a round within `wait_timeout`; running the loop again keeps waiting."""


@dataclass
class LoopConfig:
    rounds: int = option(2, "Rounds: sample, judge, train reward, train policy, evaluate.", ge=1, le=100)
    algo: str = option("dpo", (
        "Policy trainer: 'dpo' (on the pairs), 'kto' (on thumbs: rankings' top and bottom answers, 'all bad') or "
        "'ppo' (on RM_i)."), choices=ALGOS)
    simulate: str = option("", (
        "Oracle for simulated reviewers (as `rankloop simulate --oracle`, e.g. length-in-range); empty: wait for "
        "people to rank each round."))
    policy: str = option(DEFAULT_POLICY, "Base policy (round 0 samples from it; default: [models] policy).")
    prompts: int = option(RoundConfig.prompts, "Train prompts sampled per round (one comparison each).", ge=1)
    k: int = option(RoundConfig.k, "Candidates per comparison.", ge=2, le=16)
    max_new_tokens: int = option(64, "Longest sampled response, in tokens.", ge=1)
    temperature: float = option(RoundConfig.temperature, "Sampling temperature of the candidates.", gt=0)
    required_reviewers: int = option(RoundConfig.required_reviewers, "Reviewers each comparison needs.", ge=1, le=50)
    reviewers: int = option(3, "Simulated reviewers (sim-1..sim-N).", ge=1, le=50, only=("simulated",))
    noise: float = option(0.0, "Simulated reviewers' noise (see rankloop.simulate).", ge=0, only=("simulated",))
    noise_model: str = option("gumbel", "'gumbel' (Bradley-Terry) or 'flip'.", only=("simulated",))
    spread: float = option(0.0, "Per-reviewer disagreement in [0, 1].", only=("simulated",))
    max_steps: int = option(0, "Cap on every reward and policy training run's steps (0: their own).", ge=0)
    eval_prompts: int = option(16, "Held-out prompts (split 'eval') for evaluation.", ge=1)
    eval_k: int = option(2, "Samples per held-out prompt and policy.", ge=2, le=16)
    eval_max_new_tokens: int = option(0, "Longest evaluation sample (0: max_new_tokens).", ge=0)
    poll_seconds: float = option(10.0, "How often to check the reviewers' progress.", gt=0)
    wait_timeout: float = option(0.0, "Give up waiting for reviewers after N s (0: never).", ge=0)
    seed: int = field(default=0, metadata={"help": "Base seed (round i samples with seed + i)."})
    eval_policy_runs: bool = field(default=True, metadata={"help": (
        "Also run `rankloop eval policy` (new vs previous; its own run row and report) on the loop's own samples: "
        "each policy is sampled once and cached.")})
    forgetting_set: str = option("", (
        "Held-out questions with reference answers for the forgetting check, a JSONL file of {prompt, answer} "
        "(relative to the workspace; empty: rankloop's 40 general questions, rankloop/data/heldout_general.jsonl)."))
    forgetting_threshold: float = option(0.1, (
        "The round report warns when the held-out reference answers' mean log-likelihood under the new policy is "
        "more than this many nats per token below the base policy's (0.1: about 10% higher perplexity)."), ge=0)
    collapse_threshold: float = option(0.5, (
        "The round report warns when the distinct-2 of the new policy's held-out samples (distinct word bigrams "
        "over all) falls below this fraction of round 0's: one answer for every prompt (0: never)."), ge=0, le=1)
    device: str | None = shared("device")
    reward: dict[str, Any] = field(default_factory=dict, metadata={"help": "[reward] fields for the loop's runs."})
    dpo: dict[str, Any] = field(default_factory=dict, metadata={"help": "[dpo] fields for the loop's runs."})
    kto: dict[str, Any] = field(default_factory=dict, metadata={"help": "[kto] fields for the loop's runs."})
    ppo: dict[str, Any] = field(default_factory=dict, metadata={"help": "[ppo] fields for the loop's runs."})

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ValueError(f"{name}: {message}")

        # the simulated reviewers' own bounds are SimulationConfig's, checked below when they are simulated
        check_bounds(self, ValueError, skip=() if self.simulate else ("reviewers", "noise"))
        need(bool(self.policy.strip()), "policy", "must name a model")
        for name in TRAINER_TABLES:
            need(isinstance(getattr(self, name), dict), name, "must be a table of that section's fields")
        if self.simulate:
            from rankloop.simulate import SimulationConfig

            need(self.reviewers >= self.required_reviewers, "reviewers",
                 f"{self.reviewers} simulated reviewers cannot give the {self.required_reviewers} judgments each "
                 "comparison needs (required_reviewers)")

            SimulationConfig(self.simulate, self.reviewers, self.noise, self.noise_model, self.spread)

    @property
    def reviewing(self) -> str:
        """Who ranks: 'simulated' reviewers (with `simulate`) or 'people'; the simulated reviewers' fields are read
        only in the first case."""
        return "simulated" if self.simulate else "people"

    @property
    def eval_tokens(self) -> int:
        return self.eval_max_new_tokens or self.max_new_tokens


def loop_config(raw: dict[str, Any], base: LoopConfig | None = None, where: str = "") -> LoopConfig:
    """`base` (default: the defaults) updated with `raw`; `reward.X` / `dpo.X` / `kto.X` / `ppo.X` keys go to those
    tables."""
    from rl.config import PolicyConfigError
    from training.config import coerce_field

    values = asdict(base or LoopConfig())
    known = {f.name for f in fields(LoopConfig)}
    for key, value in raw.items():
        section, _, sub = key.partition(".")
        if sub and section in TRAINER_TABLES:
            values[section] = {**values[section], sub: value}
        elif key not in known:
            raise ValueError(f"{where}{key}: unknown field (known: {', '.join(sorted(known))})")
        elif key in TRAINER_TABLES:
            values[key] = {**values[key], **value} if isinstance(value, dict) else value
        else:
            values[key] = coerce_field(LoopConfig, key, value, where, PolicyConfigError)
    try:
        return LoopConfig(**values)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from e


def policy_config_class(algo: str) -> type:
    """The config class of the policy trainer `algo` (its rankloop.toml section is named `algo`)."""
    from rl.config import DPOTrainingConfig, KTOTrainingConfig
    from rl.ppo_config import PPOTrainingConfig

    return {"dpo": DPOTrainingConfig, "kto": KTOTrainingConfig, "ppo": PPOTrainingConfig}[algo]


def check_trainer_settings(ws: Workspace, config: LoopConfig) -> None:
    """Build the reward and policy trainers' configs once, so a bad `reward.X` / `dpo.X` / `kto.X` / `ppo.X` setting
    fails before the loop writes anything (not rounds later)."""
    from rankloop.loop_eval import forgetting_items
    from reward.config import load_reward_config
    from rl.config import config_from_dict, load_section

    forgetting_items(ws, config)  # a bad held-out set fails here too
    path = ws.root / "rankloop.toml"
    load_reward_config(ws.config.extra, path, None, {**config.reward, "name": "check"})
    section, cls = config.algo, policy_config_class(config.algo)
    base = load_section(cls, section, ws.config.extra, path)
    config_from_dict(cls, {**getattr(config, section), "policy": config.policy}, base, where=f"loop: [{section}] ")
