"""What an admin may launch from the browser, and turning a filled form into `rankloop` arguments.

Only the commands below, only their listed options, and `--set FIELD=VALUE` lines whose field belongs to the
command's config section: the argument list is built here, item by item, and never goes through a shell. Values
are checked before anything starts; a bad one raises `JobInputError` naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from reward.config import RewardConfigError, parse_assignment
from training.config import coerce_field, default_of, field_of, field_type, main_flag


class JobInputError(ValueError):
    """A launch form value that cannot be used: the message names the field."""


@dataclass(frozen=True)
class Option:
    flag: str  # e.g. "--max-steps"
    kind: str  # "int", "float", "text", "flag" (on/off), or "choice"
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # the smallest value (with `above`: values must be greater)
    default: Any = None  # what the form shows first (None: the command's own default)
    maximum: float | None = None  # the largest value (with `below`: values must be smaller)
    above: bool = False
    below: bool = False
    unset: Any = None  # one more value allowed outside the bounds (max_steps' -1: "not set")
    field: tuple[str, str] | None = None  # (config section, field) this option mirrors: tests/test_options.py

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
    from rl.config import DPOTrainingConfig, KTOTrainingConfig, RoundConfig, SamplingParams, SFTTrainingConfig
    from rl.ppo_config import PPOTrainingConfig

    return {"reward": RewardTrainingConfig, "sft": SFTTrainingConfig, "dpo": DPOTrainingConfig,
            "kto": KTOTrainingConfig, "ppo": PPOTrainingConfig, "loop": LoopConfig, "round": RoundConfig,
            "generation": SamplingParams}


def mirror(section: str, name: str, *, show_default: bool = False, choices: tuple[str, ...] = ()) -> Option:
    """The form's option for the field `name` of `section`'s config: flag, kind, help, bounds (and, with
    `show_default`, the default the form shows) as the field declares them (training.config.option)."""
    cls = _config_classes()[section]
    f = field_of(cls, name)
    meta = f.metadata
    hint = field_type(cls, name)
    choices = choices or tuple(meta.get("choices") or ())
    kind = "flag" if hint is bool else "choice" if choices else "int" if hint is int else "float" if hint is float \
        else "text"
    low, high = ("gt", "ge"), ("lt", "le")
    minimum = next((meta[k] for k in low if meta.get(k) is not None), None)
    maximum = next((meta[k] for k in high if meta.get(k) is not None), None)
    return Option(main_flag(f), kind, meta["help"], choices, minimum,
                  default_of(cls, name) if show_default else None, maximum, meta.get("gt") is not None,
                  meta.get("lt") is not None, meta.get("unset"), (section, name))


def _fine_tuning_only(option: Option) -> Option:
    """A reward-training option that the default probe refuses (it trains no steps)."""
    return replace(option, help=f"{option.help} Fine-tuning only: with --full (the default probe refuses it).")


def _device(section: str) -> Option:
    return mirror(section, "device", choices=("cpu", "cuda", "mps"))


def _policy_trainer(section: str, *names: str) -> tuple[Option, ...]:
    return (mirror(section, "policy"), mirror(section, "max_steps"), *(mirror(section, n) for n in names),
            mirror(section, "learning_rate"), _device(section), _RESUME)


_RESUME = Option("--resume", "flag", "Continue the newest interrupted run of this kind from its last checkpoint.")

COMMANDS: dict[str, JobCommand] = {
    "train reward": JobCommand(("train", "reward"), "Train a reward model on the workspace's preference pairs.", (
        mirror("reward", "base"), *(_fine_tuning_only(mirror("reward", n)) for n in ("max_steps",)),
        mirror("reward", "max_pairs"), mirror("reward", "loss"),
        *(_fine_tuning_only(mirror("reward", n)) for n in ("num_train_epochs", "learning_rate")),
        Option("--full", "flag", "Fine-tune the whole backbone with TRL (default: a linear probe on the frozen "
               "backbone; settings method = \"lora\" for LoRA)."),
        _fine_tuning_only(mirror("reward", "margin")), mirror("reward", "name"), _device("reward"), _RESUME,
    ), ("reward",)),
    "train sft": JobCommand(("train", "sft"), "Supervised fine-tuning on edits and top-ranked answers.",
                            _policy_trainer("sft", "max_pairs", "num_train_epochs"), ("sft",)),
    "train dpo": JobCommand(("train", "dpo"), "Steer the policy with DPO on the preference pairs.",
                            _policy_trainer("dpo", "max_pairs", "num_train_epochs", "beta"), ("dpo",)),
    "train kto": JobCommand(("train", "kto"), "Steer the policy with KTO on thumbs from rankings and 'all bad'.",
                            _policy_trainer("kto", "max_pairs", "num_train_epochs", "beta"), ("kto",)),
    "train ppo": JobCommand(("train", "ppo"), "Steer the policy with PPO (or RLOO/GRPO) against a reward model.",
                            _policy_trainer("ppo", "algo", "reward", "max_prompts"), ("ppo",)),
    "generate": JobCommand(("generate",), "Sample candidates for prompts without a comparison yet.", (
        Option("--policy", "text", "Model row to sample from (empty: the default policy)."),
        Option("--prompts", "int", "Prompts to sample for.", minimum=1, default=16),
        mirror("generation", "k", show_default=True),
        Option("--round", "int", "Round the comparisons belong to.", minimum=0),
        Option("--required-reviewers", "int", "Reviewers each comparison needs.", minimum=1),
        mirror("generation", "max_new_tokens"), mirror("generation", "temperature"),
        Option("--split", "text", "Only prompts of this split (train, eval, ...)."), _device("round"),
    )),
    "round next": JobCommand(("round", "next"), "Sample a new round of comparisons from the newest policy.", (
        mirror("round", "policy"),
        *(mirror("round", n, show_default=True) for n in ("k", "prompts", "max_new_tokens", "temperature",
                                                          "required_reviewers")),
        _device("round"),
    )),
    "loop": JobCommand(("loop",), "Sample, judge (people or an oracle), train, evaluate: N rounds.", (
        mirror("loop", "rounds", show_default=True), mirror("loop", "algo", show_default=True),
        *(mirror("loop", n) for n in ("simulate", "prompts", "k", "max_new_tokens", "max_steps", "reviewers", "noise",
                                     "required_reviewers")), _device("loop"),
        Option("--new", "flag", "Start a new loop even if an unfinished one could be resumed (an unfinished loop "
                                "resumes only with the settings it was started with)."),
    ), ("loop", "reward", "dpo", "kto", "ppo")),
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
        if option.unset is not None and number == option.unset:
            return [option.flag, str(number)]
        if option.minimum is not None and (number <= option.minimum if option.above else number < option.minimum):
            raise JobInputError(f"{where}: must be {'>' if option.above else '>='} {option.minimum:g}, got {raw!r}")
        if option.maximum is not None and (number >= option.maximum if option.below else number > option.maximum):
            raise JobInputError(f"{where}: must be {'<' if option.below else '<='} {option.maximum:g}, got {raw!r}")
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
