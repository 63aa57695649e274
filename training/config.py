"""Typed TOML sections for the training configs ([reward], [sft], [dpo], [ppo], [loop]): one dataclass per section,
each field with its help text. Unknown or ill-typed fields are errors naming the file, the section and the field;
each function takes the error class its messages are raised as."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Fields every trainer config declares alike: name -> (default, or a factory for a list; help).
SHARED_FIELDS: dict[str, tuple[Any, str]] = {
    "aggregate": (False, "Train on one majority row per comparison instead of one per reviewer judgment."),
    "rounds": (list, "Only comparisons of these rounds (none: all)."),
    "models": (list, "Only data with a response written by one of these models (empty: all)."),
    "reviewers": (list, "Only these reviewers' judgments."),
    "splits": (list, "Only prompts of these splits (empty: all)."),
    "min_agreement": (None, "Drop data that fewer than this share of the reviewers agree with (0..1)."),
    "lora_r": (16, "LoRA rank."),
    "lora_alpha": (32, "LoRA scaling numerator (scale = alpha / r)."),
    "num_train_epochs": (1.0, "Passes over the training data."),
    "max_steps": (-1, "Stop after this many optimizer steps (-1: epochs decide)."),
    "per_device_train_batch_size": (8, "Examples (pairs or rows) per step per device."),
    "gradient_accumulation_steps": (1, "Micro-batches per optimizer step."),
    "device": (None, "'cpu', 'cuda', 'cuda:N' or 'mps' (default: best)."),
    "bf16": (None, "bf16 mixed precision (default: on with CUDA; off on CPU, where bf16 is emulated and ~20x "
                   "slower)."),
    "gradient_checkpointing": (None, "Recompute activations to save memory (default: only on CUDA for models over "
                                     "1B parameters)."),
    "early_stopping_patience": (3, "Stop when the held-out metric has not improved for N evaluations (0: never)."),
    "save_total_limit": (2, "Checkpoints kept on disk."),
}


def shared(name: str) -> Any:
    """The dataclass field `name` of SHARED_FIELDS (declare its type in the config class)."""
    default, help_text = SHARED_FIELDS[name]
    if default is list:
        return field(default_factory=list, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})




@dataclass
class DataSelection:
    """Which judgments a trainer reads: the filters of `rankloop export pairs` (training/snapshot.py applies them).
    The reward and policy configs extend it, so these fields come first in their sections."""

    aggregate: bool = shared("aggregate")
    rounds: list[int] = shared("rounds")
    models: list[str] = shared("models")
    reviewers: list[str] = shared("reviewers")
    splits: list[str] = shared("splits")
    min_agreement: float | None = shared("min_agreement")


@dataclass
class TrainerConfig(DataSelection):
    """The fields that mean the same in every HF-trainer config (reward, SFT, DPO): the schedule, LoRA's size, the
    device and the checkpoints. Each config checks them in its own `__post_init__` (its error class)."""

    num_train_epochs: float = shared("num_train_epochs")
    max_steps: int = shared("max_steps")
    per_device_train_batch_size: int = shared("per_device_train_batch_size")
    gradient_accumulation_steps: int = shared("gradient_accumulation_steps")
    lora_r: int = shared("lora_r")
    lora_alpha: int = shared("lora_alpha")
    device: str | None = shared("device")
    bf16: bool | None = shared("bf16")
    gradient_checkpointing: bool | None = shared("gradient_checkpointing")
    early_stopping_patience: int = shared("early_stopping_patience")
    save_total_limit: int = shared("save_total_limit")

def _is(value: Any, want: type) -> bool:
    if isinstance(value, bool):
        return want is bool
    if want is float:
        return isinstance(value, int | float)
    return isinstance(value, want)


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is list:
        return f"a list of {typing.get_args(t)[0].__name__}"
    return getattr(t, "__name__", str(t))


def coerce_field(cls: type, name: str, value: Any, where: str, error: type[Exception]) -> Any:
    """Check one raw TOML/CLI value against the field's annotation; ints are accepted for floats."""
    hint = typing.get_type_hints(cls)[name]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:  # a stored config (TOML itself has no null)
        return None
    for want in options:
        if want is type(None):
            continue
        if typing.get_origin(want) is list:
            (item,) = typing.get_args(want)
            if isinstance(value, list) and all(_is(v, item) for v in value):
                return [float(v) if item is float else v for v in value]
        elif _is(value, want):
            return float(value) if want is float else value
    names = " or ".join(_type_name(t) for t in options if t is not type(None))
    raise error(f"{where}{name}: expected {names}, got {type(value).__name__} {value!r}")


def dataclass_from_dict(cls: type[T], raw: dict[str, Any], base: T | None, where: str, error: type[Exception]) -> T:
    """`cls` from `base` (default: the defaults) updated with `raw`; unknown or ill-typed fields are errors.

    `where` prefixes messages, e.g. "rankloop.toml: [reward] ".
    """
    known = {f.name for f in fields(cls)}
    values = asdict(base if base is not None else cls())
    for key, value in raw.items():
        if key not in known:
            raise error(f"{where}{key}: unknown field (known: {', '.join(sorted(known))})")
        values[key] = coerce_field(cls, key, value, where, error)
    try:
        return cls(**values)
    except error as e:
        raise error(f"{where}{e}") from e


def load_toml_section(cls: type[T], section: str, workspace_extra: dict[str, Any], config_path: Path,
                      config_file: str | Path | None, overrides: dict[str, Any] | None,
                      error: type[Exception]) -> T:
    """Defaults, then the workspace's `[section]`, then `--config FILE`'s `[section]`, then CLI overrides."""
    import tomllib

    def from_doc(doc: dict[str, Any], path: Path, base: T | None) -> T:
        raw = doc.get(section, {})
        if not isinstance(raw, dict):
            raise error(f"{path}: [{section}] must be a table")
        return dataclass_from_dict(cls, raw, base, f"{path}: [{section}] ", error)

    cfg = from_doc(workspace_extra, config_path, None)
    if config_file is not None:
        path = Path(config_file)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise error(f"{path}: not found") from e
        except tomllib.TOMLDecodeError as e:
            raise error(f"{path}: not valid TOML: {e}") from e
        cfg = from_doc(doc, path, cfg)
    return dataclass_from_dict(cls, overrides, cfg, "command line: ", error) if overrides else cfg


def render_toml_section(cfg: Any, section: str) -> str:
    """A `[section]` TOML block of `cfg` with each field's help as a comment (None fields commented out)."""
    import json

    lines = [f"[{section}]"]
    for f in fields(cfg):
        lines.append(f"# {f.metadata['help']}")
        value = getattr(cfg, f.name)
        text = "(chosen per device)" if value is None else str(value).lower() if isinstance(value, bool) \
            else json.dumps(value)
        lines.append(f"{'# ' if value is None else ''}{f.name} = {text}")
    return "\n".join(lines) + "\n"
