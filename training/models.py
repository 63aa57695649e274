"""A trained model's size, its LoRA settings, and its place in the lineage (the parent it was trained from)."""

from __future__ import annotations

from typing import Any


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
