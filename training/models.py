"""A trained model's size, its LoRA settings, and its place in the lineage (the parent it was trained from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_POLICY = "smollm2-135m-instruct"  # the default policy (and reward backbone): `rankloop models prepare`


def locate(db: Any, name: str, what: str, instead: str) -> tuple[Any, Path | None]:
    """Where a model to train from is: (its workspace row, None), (None, its local folder), or (None, None) for
    anything else (a hub id, a built-in). A reward model (`instead` says what to name), a folder without
    config.json, a path that is not there and the default policy before `rankloop models prepare` are errors
    naming `what`."""
    from store.models import UnknownModel, get_model

    try:
        row = get_model(db, name)
    except UnknownModel:
        row = None
    if row is not None:
        if row.kind == "reward":
            raise ValueError(f"{what}: {name!r} is a reward model; {instead}")
        return row, None
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{what}: {local}: not a model folder (no config.json)")
        return None, local.resolve()
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{what}: {name}: no such folder")
    if name.lower() == DEFAULT_POLICY:
        raise FileNotFoundError(f"{what}: {name!r} is not in this workspace yet: run `rankloop models prepare`")
    return None, None


def count_parameters(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_config(r: int, alpha: int, target_modules: list[str], task: str, default_targets: Any,
                modules_to_save: list[str] | None = None) -> Any:
    """peft's LoraConfig without dropout; `target_modules` empty: `default_targets` (None: peft's per-architecture
    default; "all-linear")."""
    from peft import LoraConfig

    return LoraConfig(task_type=task, r=r, lora_alpha=alpha, lora_dropout=0.0,
                      target_modules=list(target_modules) or default_targets, modules_to_save=modules_to_save)


def parent_id(db: Any, known: int | None, name: str, location: str) -> int:
    """The workspace row a model was trained from: `known`, else the row named `name`, else `name` registered now
    as an external model at `location` (so lineage always reaches the starting point)."""
    from store.models import UnknownModel, add_model, get_model

    if known is not None:
        return known
    try:
        return get_model(db, name).id
    except UnknownModel:
        return add_model(db, name, "external", base=location, path=location)
