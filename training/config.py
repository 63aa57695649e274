"""Typed TOML sections for the training configs ([reward], [sft], [dpo], [ppo], [loop]): one dataclass per section,
each field with its help text. Unknown or ill-typed fields are errors naming the file, the section and the field;
each function takes the error class its messages are raised as."""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

def option(default: Any, help: str, *, flag: str | None = None, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, unset: Any = None, choices: tuple[str, ...] = (),
           only: tuple[str, ...] = ()) -> Any:
    """A config field declared once, for every place that shows it: its default (a list is copied per instance),
    its help, and what the CLI option (rankloop/commands/options.py), the Runs form (rankloop/job_commands.py),
    the TOML comments and the README reference derive from it:

    - `flag`: the command-line flag when it is not `--field-name` (e.g. "--lr"; "--x/--no-x" for a bool pair);
    - `ge`/`gt`/`le`/`lt`: the bounds the config's `__post_init__` enforces (tests/test_options.py checks both
      agree); `unset`: one more value allowed outside them, meaning "not set" (max_steps' -1);
    - `choices`: the allowed texts; `only`: the values of the config's method field (`algo`, `method`) that read
      this field (an option given to another method is refused, naming it).
    """
    meta = {"help": help, "flag": flag, "ge": ge, "gt": gt, "le": le, "lt": lt, "unset": unset,
            "choices": tuple(choices), "only": tuple(only)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def bounds_text(meta: Any) -> str:
    """A field's bounds as text, e.g. "2<=x<=16", "0<x<=1", "x>=1" (empty: none)."""
    def num(key: str) -> str:
        return f"{meta[key]:g}" if meta.get(key) is not None else ""

    low = f"{num('ge')}<=" if num("ge") else f"{num('gt')}<" if num("gt") else ""
    high = f"<={num('le')}" if num("le") else f"<{num('lt')}" if num("lt") else ""
    if not high and low:  # "x>=1" reads better than "1<=x"
        text = f"x>={num('ge')}" if num("ge") else f"x>{num('gt')}"
    else:
        text = f"{low}x{high}" if low or high else ""
    return f"{text} or {meta['unset']}" if text and meta.get("unset") is not None else text


def bounds_phrase(meta: Any, whole: bool) -> str:
    """What a value outside the field's bounds is told: "between 2 and 16", "in (0, 1]", ">= 1 (or -1)"."""
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    low, high = (ge if ge is not None else gt), (le if le is not None else lt)
    if low is not None and high is not None:
        text = f"between {low:g} and {high:g}" if whole and ge is not None and le is not None else \
            f"in {'[' if ge is not None else '('}{low:g}, {high:g}{']' if le is not None else ')'}"
    elif low is not None:
        text = f">= {ge:g}" if ge is not None else f"> {gt:g}"
    else:
        text = f"<= {le:g}" if le is not None else f"< {lt:g}"
    return text + (f" (or {meta['unset']})" if meta.get("unset") is not None else "")


def check_bounds(cfg: Any, error: type[Exception], skip: tuple[str, ...] = ()) -> None:
    """Enforce what `cfg`'s fields declare, but for those in `skip`: a text among its `choices`, a number within its
    bounds (None and a field's `unset` value pass; a value of another type is left to the type checks), and a
    `device` that names cpu, cuda(:N) or mps. The first field that fails raises `error` naming it."""
    for f in fields(cfg):
        if f.name in skip:
            continue
        value, meta = getattr(cfg, f.name), f.metadata
        if isinstance(value, str) and meta.get("choices") and value not in meta["choices"]:
            *most, last = (repr(c) for c in meta["choices"])
            raise error(f"{f.name}: must be {', '.join(most)} or {last}, got {value!r}")
        if f.name == "device" and value is not None and value.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise error(f"device: must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")
        if value is None or value == meta.get("unset") or isinstance(value, bool) \
                or not isinstance(value, int | float):
            continue
        ok = all(meta.get(key) is None or test(value, meta[key]) for key, test in (
            ("ge", lambda v, b: v >= b), ("gt", lambda v, b: v > b), ("le", lambda v, b: v <= b),
            ("lt", lambda v, b: v < b)))
        if not ok:
            raise error(f"{f.name}: must be {bounds_phrase(meta, isinstance(value, int))}")


def field_of(cls: type, name: str) -> Field:
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def flag_of(f: Field) -> str:
    """The field's command-line flag: its declared one, else `--field-name` (a bool: `--x/--no-x`)."""
    flag = f.metadata.get("flag")
    if flag:
        return flag
    dashed = f.name.replace("_", "-")
    return f"--{dashed}/--no-{dashed}" if str(f.type).startswith("bool") else f"--{dashed}"


def main_flag(f: Field) -> str:
    """The flag that turns the option on (`--margin` of `--margin/--no-margin`)."""
    return flag_of(f).split("/")[0]


def default_of(cls: type, name: str) -> Any:
    f = field_of(cls, name)
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def field_type(cls: type, name: str) -> Any:
    """The field's type without None: `int | None` -> int; `list[str]` stays."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


# Fields every trainer config declares alike: name -> option(...)'s arguments.
SHARED_FIELDS: dict[str, dict[str, Any]] = {
    "aggregate": dict(default=False, flag="--aggregate/--per-reviewer", help=(
        "Train on one majority row per comparison instead of one per reviewer judgment.")),
    "rounds": dict(default=[], flag="--round", help="Only comparisons of these rounds (none: all)."),
    "models": dict(default=[], flag="--model", help=(
        "Only data with a response written by one of these models (empty: all).")),
    "reviewers": dict(default=[], flag="--reviewer", help="Only these reviewers' judgments."),
    "splits": dict(default=[], flag="--split", help="Only prompts of these splits (empty: all)."),
    "min_agreement": dict(default=None, ge=0, le=1, help=(
        "Drop data that fewer than this share of the reviewers agree with (0..1).")),
    "edited_first": dict(default=True, help=(
        "A reviewer's edited answer ranks above every candidate of its comparison in pairs and KTO rows (\"all "
        "bad\" included).")),
    "exclude_flagged": dict(default=False, flag="--exclude-flagged/--include-flagged", help=(
        "Leave out the judgments of reviewers flagged for low gold accuracy (workspace setting "
        "reviewer_flag_below); the names are recorded.")),
    "lora_r": dict(default=16, ge=1, help="LoRA rank."),
    "lora_alpha": dict(default=32, ge=1, help="LoRA scaling numerator (scale = alpha / r)."),
    "num_train_epochs": dict(default=1.0, gt=0, flag="--epochs", help="Passes over the training data."),
    "max_steps": dict(default=-1, ge=1, unset=-1, help="Stop after this many optimizer steps (-1: epochs decide)."),
    "per_device_train_batch_size": dict(default=8, ge=1, help="Examples (pairs or rows) per step per device."),
    "gradient_accumulation_steps": dict(default=1, ge=1, help="Micro-batches per optimizer step."),
    "device": dict(default=None, help="'cpu', 'cuda', 'cuda:N' or 'mps' (default: best)."),
    "bf16": dict(default=None, help=(
        "bf16 mixed precision (default: on with CUDA; off on CPU, where bf16 is emulated and ~20x slower).")),
    "gradient_checkpointing": dict(default=None, help=(
        "Recompute activations to save memory (default: only on CUDA for models over 1B parameters).")),
    "early_stopping_patience": dict(default=3, ge=0, help=(
        "Stop when the held-out metric has not improved for N evaluations (0: never).")),
    "save_total_limit": dict(default=2, ge=1, help="Checkpoints kept on disk."),
}


def shared(name: str) -> Any:
    """The dataclass field `name` of SHARED_FIELDS (declare its type in the config class)."""
    return option(**SHARED_FIELDS[name])


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
    edited_first: bool = shared("edited_first")
    exclude_flagged: bool = shared("exclude_flagged")


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
