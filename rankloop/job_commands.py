"""What an admin may launch from the browser, and turning a filled form into `rankloop` arguments.

Only the commands below, only their listed options, and `--set FIELD=VALUE` lines whose field belongs to the
command's config section: the argument list is built here, item by item, and never goes through a shell. Values
are checked before anything starts; a bad one raises `JobInputError` naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from reward.config import RewardConfigError, coerce_field, parse_assignment


class JobInputError(ValueError):
    """A launch form value that cannot be used: the message names the field."""


@dataclass(frozen=True)
class Option:
    flag: str  # e.g. "--max-steps"
    kind: str  # "int", "float", "text", "flag" (on/off), or "choice"
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    default: Any = None  # what the form shows first (None: the command's own default)

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--")


@dataclass(frozen=True)
class JobCommand:
    argv: tuple[str, ...]
    help: str
    options: tuple[Option, ...]
    sections: tuple[str, ...] = ()  # config sections whose fields `--set` may name ('' : the command's own)


def _config_classes() -> dict[str, type]:
    from rankloop.loop_config import LoopConfig
    from reward.config import RewardTrainingConfig
    from rl.config import DPOTrainingConfig, SFTTrainingConfig
    from rl.ppo_config import PPOTrainingConfig

    return {"reward": RewardTrainingConfig, "sft": SFTTrainingConfig, "dpo": DPOTrainingConfig,
            "ppo": PPOTrainingConfig, "loop": LoopConfig}


_STEPS = Option("--max-steps", "int", "Stop after N optimizer steps (bounds the run).", minimum=1)
_PAIRS = Option("--max-pairs", "int", "Train on at most N pairs (bounds the run).", minimum=1)
_LR = Option("--lr", "float", "Learning rate.", minimum=0)
_EPOCHS = Option("--epochs", "float", "Passes over the pairs.", minimum=0)


def _fine_tuning_only(option: Option) -> Option:
    """A reward-training option that the default probe refuses (it trains no steps)."""
    return replace(option, help=f"{option.help} Fine-tuning only: with --full (the default probe refuses it).")

_POLICY = Option("--policy", "text", "Policy to start from (workspace model name; empty: the section's default).")
_RESUME = Option("--resume", "flag", "Continue the newest interrupted run of this kind from its last checkpoint.")
_DEVICE = Option("--device", "choice", "Where to train (empty: CUDA when present).", choices=("cpu", "cuda", "mps"))

COMMANDS: dict[str, JobCommand] = {
    "train reward": JobCommand(("train", "reward"), "Train a reward model on the workspace's preference pairs.", (
        Option("--base", "text", "Backbone: a workspace model, smollm2-135m-instruct (default) or all-minilm-l6-v2."),
        _fine_tuning_only(_STEPS), _PAIRS, _fine_tuning_only(_EPOCHS), _fine_tuning_only(_LR),
        Option("--full", "flag", "Fine-tune the whole backbone with TRL (default: a linear probe on the frozen "
               "backbone; settings method = \"lora\" for LoRA)."),
        Option("--margin", "flag", "Add a margin from the rank gap to the loss (fine-tuning only)."),
        Option("--name", "text", "Name of the new reward model (empty: reward-run<ID>)."), _DEVICE, _RESUME,
    ), ("reward",)),
    "train sft": JobCommand(("train", "sft"), "Supervised fine-tuning on edits and top-ranked answers.", (
        _POLICY, _STEPS, _PAIRS, _EPOCHS, _LR, _DEVICE, _RESUME), ("sft",)),
    "train dpo": JobCommand(("train", "dpo"), "Steer the policy with DPO on the preference pairs.", (
        _POLICY, _STEPS, _PAIRS, _EPOCHS, _LR,
        Option("--beta", "float", "KL anchor strength (TRL default 0.1).", minimum=0), _DEVICE, _RESUME), ("dpo",)),
    "train ppo": JobCommand(("train", "ppo"), "Steer the policy with PPO (or RLOO/GRPO) against a reward model.", (
        _POLICY, Option("--algo", "choice", "ppo (ours), rloo or grpo (TRL).", choices=("ppo", "rloo", "grpo")),
        Option("--reward", "text", "Reward model that scores responses (empty: the newest)."), _STEPS,
        Option("--max-prompts", "int", "Use at most N prompts (bounds the run).", minimum=1), _LR, _DEVICE,
        _RESUME), ("ppo",)),
    "generate": JobCommand(("generate",), "Sample candidates for prompts without a comparison yet.", (
        Option("--policy", "text", "Model row to sample from (empty: the default policy)."),
        Option("--prompts", "int", "Prompts to sample for.", minimum=1, default=16),
        Option("--k", "int", "Candidates per prompt.", minimum=2, default=4),
        Option("--round", "int", "Round the comparisons belong to.", minimum=0),
        Option("--required-reviewers", "int", "Reviewers each comparison needs.", minimum=1),
        Option("--max-new-tokens", "int", "Longest response in tokens.", minimum=1),
        Option("--temperature", "float", "Sampling temperature.", minimum=0),
        Option("--split", "text", "Only prompts of this split (train, eval, ...)."), _DEVICE,
    )),
    "round next": JobCommand(("round", "next"), "Sample a new round of comparisons from the newest policy.", (
        Option("--policy", "text", "Policy to sample from (empty: the newest)."),
        Option("--k", "int", "Candidates per comparison.", minimum=2, default=4),
        Option("--prompts", "int", "Prompts to queue.", minimum=1, default=32),
        Option("--max-new-tokens", "int", "Longest response in tokens.", minimum=1, default=128),
        Option("--temperature", "float", "Sampling temperature.", minimum=0, default=0.8),
        Option("--reviewers", "int", "Reviewers wanted per comparison.", minimum=1, default=1), _DEVICE,
    )),
    "loop": JobCommand(("loop",), "Sample, judge (people or an oracle), train, evaluate: N rounds.", (
        Option("--rounds", "int", "Rounds to run.", minimum=1, default=2),
        Option("--algo", "choice", "Policy trainer.", choices=("dpo", "ppo"), default="dpo"),
        Option("--simulate", "text", "Oracle for simulated reviewers, e.g. rankloop.oracles:length_in_range "
                                     "(empty: wait for people to rank each round)."),
        Option("--prompts", "int", "Train prompts sampled per round.", minimum=1),
        Option("--k", "int", "Candidates per comparison.", minimum=2),
        Option("--max-new-tokens", "int", "Longest sampled response.", minimum=1),
        Option("--max-steps", "int", "Cap on every training run's steps.", minimum=1),
        Option("--reviewers", "int", "Simulated reviewers.", minimum=1),
        Option("--noise", "float", "Simulated reviewers' noise.", minimum=0),
        Option("--required-reviewers", "int", "Reviewers per comparison.", minimum=1), _DEVICE,
        Option("--new", "flag", "Start a new loop even if an unfinished one could be resumed (an unfinished loop "
                                "resumes only with the settings it was started with)."),
    ), ("loop", "reward", "dpo", "ppo")),
}

_TEXT = re.compile(r"^[\w.:/@+=,\- ]{1,200}$")


def _value(option: Option, raw: Any) -> list[str]:
    """The argument items for one form value (none when it was left empty or off)."""
    if raw is None or raw == "" or raw is False:
        return []
    where = option.name
    if option.kind == "flag":
        return [option.flag]
    if option.kind in ("int", "float"):
        try:
            number = int(raw) if option.kind == "int" and float(raw) == int(float(raw)) else float(raw)
        except (TypeError, ValueError) as e:
            raise JobInputError(f"{where}: expected a number, got {raw!r}") from e
        if option.kind == "int" and not isinstance(number, int):
            raise JobInputError(f"{where}: expected a whole number, got {raw!r}")
        if option.minimum is not None and number < option.minimum:
            raise JobInputError(f"{where}: must be >= {option.minimum:g}, got {raw!r}")
        return [option.flag, str(number)]
    text = str(raw).strip()
    if option.kind == "choice" and text not in option.choices:
        raise JobInputError(f"{where}: must be one of {', '.join(option.choices)}, got {text!r}")
    if text.startswith("-") or not _TEXT.match(text):
        raise JobInputError(f"{where}: {text!r} is not a name (letters, digits and . : / @ + = , - _ only)")
    return [option.flag, text]


def _setting(command: str, spec: JobCommand, line: str, number: int) -> list[str]:
    """One `FIELD=VALUE` line, checked against the field's type in the command's config section."""
    where = f"settings line {number}"
    if not spec.sections:
        raise JobInputError(f"{where}: `{command}` takes no settings")
    try:
        key, value = parse_assignment(line)
    except RewardConfigError as e:
        raise JobInputError(f"{where}: expected FIELD=VALUE, got {line!r}") from e
    classes = _config_classes()
    section, name = key.split(".", 1) if "." in key and len(spec.sections) > 1 else (spec.sections[0], key)
    if section not in spec.sections or name not in {f.name for f in fields(classes[section])}:
        hint = " (other sections' fields take a prefix, e.g. reward.learning_rate)" if len(spec.sections) > 1 else ""
        raise JobInputError(f"{where}: {key!r} is not a field of [{'], ['.join(spec.sections)}]{hint}")
    coerce_field(classes[section], name, value, f"{where}: ", JobInputError)
    return ["--set", line.strip()]


def build_argv(command: str, values: dict[str, Any], settings: str = "") -> list[str]:
    """The `rankloop` arguments for `command` with the form's `values` (by option name) and settings lines."""
    spec = COMMANDS.get(command)
    if spec is None:
        raise JobInputError(f"command: {command!r} cannot be launched from the browser "
                            f"(one of: {', '.join(COMMANDS)})")
    unknown = sorted(set(values) - {o.name for o in spec.options})
    if unknown:
        raise JobInputError(f"{unknown[0]}: not an option of `{command}`")
    argv = list(spec.argv)
    for option in spec.options:
        argv += _value(option, values.get(option.name))
    for number, line in enumerate(settings.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            argv += _setting(command, spec, line, number)
    return argv
