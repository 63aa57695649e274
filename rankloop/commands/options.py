"""Click options generated from the config dataclasses: a field declared with `training.config.option` gives its
flag, type, help, default and bounds to `rankloop train ...`, `round next` and `loop` (and to the Runs page's form,
rankloop/job_commands.py), so none of them restates it. tests/test_options.py fails when they disagree."""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from training.config import bounds_text, default_of, field_of, field_type, flag_of, main_flag


def option_help(cls: type, name: str, section: str | None = None) -> str:
    """The help a generated option shows: the field's help, its default, its bounds."""
    f = field_of(cls, name)
    text = f.metadata["help"]
    default = default_of(cls, name)
    if default is False and "/" not in flag_of(f):  # a plain on/off flag: off unless given
        default = None
    shown = None if default in (None, "", []) else str(default).lower() if isinstance(default, bool) \
        else ", ".join(map(str, default)) if isinstance(default, list) else f"{default:g}" \
        if isinstance(default, float) else str(default)
    if shown is not None:
        text += f"  [default: [{section}] {name}, else {shown}]" if section else f"  [default: {shown}]"
    bounds = bounds_text(f.metadata)
    if bounds:
        text += f"  [{bounds}]"
    if typing.get_origin(field_type(cls, name)) is list:
        text += "  [repeatable]"
    return text


def click_option(cls: type, name: str, section: str | None = None) -> Callable:
    """One click option for the field `name` of `cls`. Its value is None (a list: empty) when not given, so a
    config section (or the dataclass) supplies the default; the config's own checks apply the bounds."""
    f = field_of(cls, name)
    hint = field_type(cls, name)
    kwargs: dict[str, Any] = {"default": None, "help": option_help(cls, name, section)}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        kwargs.update(multiple=True, type=item, default=())
    elif hint is bool:
        if "/" not in flag_of(f):
            kwargs["is_flag"] = True
    elif f.metadata.get("choices"):
        kwargs["type"] = click.Choice(list(f.metadata["choices"]))
    else:
        kwargs["type"] = hint
    return click.option(flag_of(f), name, **kwargs)


def config_options(cls: type, *names: str, section: str | None = None) -> Callable:
    """A decorator adding the click options of the fields `names` of `cls`, in that order. `section`: the
    rankloop.toml section whose values come before the dataclass's defaults (said in the help)."""
    options = [click_option(cls, name, section) for name in names]
    return lambda fn: functools.reduce(lambda g, opt: opt(g), reversed(options), fn)


def refuse_unused(config: Any, given: list[str] | tuple[str, ...], method_field: str, instead: str = "") -> None:
    """An option given for a field that the config's method (`algo`, ...) never reads is refused, naming it (its
    flag, or `--set FIELD`): the fields declared with `only=(...)` are read by those methods alone. `instead`:
    how to choose a method that reads them (default: "choose that <method_field>")."""
    cls, method = type(config), getattr(config, method_field)
    unused = [name for name in given if name in {f.name for f in fields(cls)}
              and field_of(cls, name).metadata.get("only") and method not in field_of(cls, name).metadata["only"]]
    if not unused:
        return
    context = click.get_current_context(silent=True)
    flagged = {p.name for p in context.command.params} if context is not None else set()
    named = ", ".join(sorted(main_flag(field_of(cls, n)) if n in flagged else f"--set {n}" for n in unused))
    readers = sorted({m for n in unused for m in field_of(cls, n).metadata["only"]})
    it = "it" if len(unused) == 1 else "them"
    raise click.ClickException(
        f"{named}: {method_field} {method!r} never reads {it} (only {' or '.join(repr(m) for m in readers)} "
        f"{'does' if len(readers) == 1 else 'do'}); leave {it} out or {instead or f'choose that {method_field}'}")
