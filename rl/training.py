"""What the policy trainers (DPO, SFT, PPO) share: resolving the starting policy, the run row and its folder,
`--resume`, per-device TrainingArguments, and registering the trained policy with its lineage.

Under `accelerate launch` (several processes) the trainers built on TRL (DPO, SFT, KTO; RLOO/GRPO through
`finish_trainer`) run on every process: the main one alone resolves the starting policy, takes the snapshot, opens
the run and shares them (`train_policy`); every process trains; the main one alone saves the merged policy,
registers it and closes the run (`finish_trainer`). A failure on any process ends the run as failed
(training/distributed.py `every_process_guard`).

A trained policy is saved merged (LoRA folded into the weights) as an ordinary model folder, so that sampling,
evaluation and the next round's training load it like any other policy; the adapter is kept beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from store.workspace import WorkspaceLike


@dataclass
class PolicyTrainingResult:
    run_id: int
    model_name: str
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]


@dataclass
class StartPolicy:
    location: str  # what from_pretrained takes
    adapter_path: str | None  # a LoRA policy's adapter, merged in at load
    parent_id: int | None  # the workspace row (lineage)
    name: str


def resolve_policy(db: str | Path, policy: str) -> StartPolicy:
    """A workspace policy row (by name), a local model folder or a hub id."""
    from training.models import locate

    row, folder = locate(db, policy, "policy", "name a policy")
    if row is not None:
        from rl.sampling import policy_location

        return StartPolicy(policy_location(row), row.adapter_path, row.id, row.name)
    if folder is not None:
        return StartPolicy(str(folder), None, None, folder.name)
    return StartPolicy(policy, None, None, policy)


def load_causal_lm(start: StartPolicy, dtype: Any = None, quantization: Any = None,
                   device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer), a LoRA policy merged; the tokenizer gets a pad token when it has none.

    Without `quantization` the model is on the CPU (the trainer moves it). With a BitsAndBytesConfig (QLoRA, see
    `quantization_config`) the base is loaded in 4 bits straight onto `device` (default: the current CUDA device)
    and prepared for k-bit training (peft: frozen, norms and embeddings in float32); the trainer turns gradient
    checkpointing on per device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(start.location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization is None:
        model = AutoModelForCausalLM.from_pretrained(start.location, dtype=dtype)
    else:
        import torch

        model = AutoModelForCausalLM.from_pretrained(
            start.location, quantization_config=quantization, dtype=quantization.bnb_4bit_compute_dtype,
            device_map={"": device or torch.cuda.current_device()})
    if start.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start.adapter_path).merge_and_unload()
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


def quantization_config(quantization: str, device: str) -> Any:
    """None for 'none'; for '4bit' the QLoRA BitsAndBytesConfig (NF4, double quantization, bf16 compute).

    Checked before a run row is written: 4-bit needs CUDA (bitsandbytes' kernels) and bitsandbytes installed."""
    from rl.config import PolicyConfigError

    if quantization == "none":
        return None
    if not device.startswith("cuda"):
        raise PolicyConfigError(
            f"quantization: '4bit' (QLoRA) needs a CUDA GPU, but this run is on {device!r}: bitsandbytes' 4-bit "
            "kernels are built for CUDA, and on a CPU a small model trains faster in float32 anyway. "
            "Set quantization = \"none\" (or --set quantization=none)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise PolicyConfigError("quantization: '4bit' (QLoRA) needs bitsandbytes, which is not installed: "
                                "pip install 'rankloop[gpu]'") from e
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def qlora(config: Any) -> Any:
    """The config's BitsAndBytesConfig or None, with the QLoRA errors raised before anything is written."""
    from training.device import resolve_device

    return quantization_config(config.quantization, resolve_device(config.device))


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def lora_config(config: Any, task: str = "CAUSAL_LM") -> Any:
    """LoRA on every linear layer unless the config names the modules."""
    from training.models import lora_config as make

    return make(config.lora_r, config.lora_alpha, config.lora_target_modules, task, "all-linear")


def device_defaults(config: Any, n_params: int, activations: int = 0) -> Any:
    from training.device import training_defaults

    return training_defaults(config.device, n_params, config.bf16, config.gradient_checkpointing, activations)


def trainer_kwargs(config: Any, run_dir: Path, dev: Any, has_eval: bool, progress: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by the DPO and SFT configs."""
    from training.hf import trainer_kwargs as shared

    return {**shared(config, run_dir, dev, has_eval, progress, config.effective_learning_rate, config.save_steps),
            "max_length": config.max_length}


def load_for_training(start: StartPolicy, config: Any, quantization: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, per-device training defaults) of the starting policy."""
    from training.device import activation_values
    from training.models import count_parameters

    model, tokenizer = load_causal_lm(start, quantization=quantization, device=config.device)
    activations = activation_values(model.config, getattr(config, "batch_positions", 0))
    return model, tokenizer, device_defaults(config, count_parameters(model)[0], activations)


def resume_config(ws: WorkspaceLike, kind: str, cls: type, run: int | str,
                  overrides: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(run id, its recorded config with `overrides`); `run` is an id or "latest" (newest unfinished `kind` run)."""
    from rl.config import config_from_dict
    from training.runs import resume_config as resume

    return resume(ws, kind, run, overrides, lambda raw, base, where: config_from_dict(cls, raw, base, where))


def open_policy_run(ws: WorkspaceLike, kind: str, config: Any, snapshot: dict[str, Any], start: StartPolicy,
                    resume_from: int | None, rows: WorkspaceLike = None) -> tuple[int, Path]:
    """(run id, run folder) of a new policy run row; `rows`, the snapshot's frame, is saved in the folder."""
    from training.runs import open_run

    record = {"config": asdict(config), "policy_location": start.location, "resumed_from": resume_from}
    return open_run(ws, kind, record, snapshot, resume_from, rows=rows)


def prepare_policy_run(ws: WorkspaceLike, kind: str, rows_kind: str, config: Any, resume_from: int | None,
                       prepare: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None
                       ) -> dict[str, Any]:
    """What the main process does before anything trains: resolve the starting policy, take the data snapshot
    (`rows_kind`, or the resumed run's saved rows), let `prepare(rows, snapshot)` check or extend them, check QLoRA,
    open the run row and folder. The result is what `share` sends the other processes."""
    from training.snapshot import snapshot_rows

    start = resolve_policy(ws.db, config.policy)
    rows, snapshot = snapshot_rows(ws.db, config, rows_kind, resume_from)
    if prepare is not None:
        rows, snapshot = prepare(rows, snapshot)
    qlora(config)  # its errors come before the row exists
    run_id, run_dir = open_policy_run(ws, kind, config, snapshot, start, resume_from, rows)
    return {"start": start, "rows": rows, "snapshot": snapshot, "run_id": run_id, "run_dir": run_dir}


def train_policy(ws: WorkspaceLike, kind: str, rows_kind: str, config: Any, train: Callable[..., Any],
                 resume_from: int | None, progress: bool, callbacks: list[Any] | None,
                 prepare: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None) -> Any:
    """The life DPO, KTO and SFT share: the main process prepares the run (`prepare_policy_run`: starting policy,
    snapshot, `prepare(rows, snapshot)` before anything is written (KTO's label check, DPO's replay; it returns the
    rows and snapshot to record), the run row) and shares it; every process calls `train(ws, config, rows, start,
    run_id, run_dir, resume_from, progress, callbacks, quantization, state)` inside `every_process_guard` (a
    failure on any process closes the row as failed). `train` ends with `finish_trainer`, which returns the result
    on the main process and a result without a model name on the others."""
    from training.distributed import train_on_every_process

    prepared, result = train_on_every_process(
        ws.db, lambda: prepare_policy_run(ws, kind, rows_kind, config, resume_from, prepare),
        lambda prepared, state: train(ws, config, prepared["rows"], prepared["start"], prepared["run_id"],
                                      Path(prepared["run_dir"]), resume_from, progress, callbacks, qlora(config),
                                      state))
    run_dir = Path(prepared["run_dir"])
    return result if result is not None else PolicyTrainingResult(prepared["run_id"], None, run_dir,
                                                                  run_dir / "model", {})


def finish_policy(ws: WorkspaceLike, model: Any, tokenizer: Any, start: StartPolicy, run_id: int, run_dir: Path,
                  name: str, rounds: list[int], metrics: dict[str, Any],
                  registered: dict[str, Any]) -> PolicyTrainingResult:
    """Save the merged policy (and adapter), register it with `registered` as its metrics, close the run row with
    `metrics`."""
    from store.runs import finish_run

    model_dir, adapter_dir = save_policy(model, tokenizer, run_dir, start)
    metrics["adapter_dir"] = registered["adapter_dir"] = str(adapter_dir) if adapter_dir else None
    register_policy(ws, name, start, model_dir, run_id, rounds, registered)
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return PolicyTrainingResult(run_id, name, run_dir, model_dir, metrics)


def finish_trainer(ws: WorkspaceLike, trainer: Any, tokenizer: Any, start: StartPolicy, run_id: int, run_dir: Path,
                   name: str, rounds: list[int], metrics: dict[str, Any], registered: dict[str, Any],
                   state: Any = None) -> PolicyTrainingResult | None:
    """`finish_policy` for the model a TRL `trainer` trained; under `accelerate launch` every process calls it.

    One process: `finish_policy` on the unwrapped model. Several: every process saves through the trainer (which
    gathers FSDP / ZeRO-3 shards into one state dict; the main process writes the adapter, or the whole model
    without LoRA), then the main one merges the saved adapter into the starting policy, saves, registers and closes
    the run, recording the process count and accelerate's distributed type; the others return None. FSDP or
    DeepSpeed in one process take the second way too (their weights are sharded or wrapped even then)."""
    sharded = bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))
    if (state is None or state.num_processes == 1) and not sharded:
        return finish_policy(ws, trainer.accelerator.unwrap_model(trainer.model), tokenizer, start, run_id, run_dir,
                             name, rounds, metrics, registered)
    from store.runs import finish_run

    lora = hasattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config")
    quantized = is_quantized(trainer.accelerator.unwrap_model(trainer.model))
    saved = run_dir / ("adapter" if lora else "model")
    trainer.save_model(str(saved))  # a collective under FSDP and ZeRO-3: every process takes part
    trainer.accelerator.wait_for_everyone()
    if state is not None and not state.is_main_process:
        return None
    model_dir, adapter_dir = saved, None
    if lora:
        import torch

        adapter_dir, model_dir = saved, run_dir / "model"
        merge_adapter(start, adapter_dir, torch.bfloat16 if quantized else None).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    metrics["distributed"] = registered["distributed"] = {
        "processes": trainer.accelerator.num_processes, "type": str(trainer.accelerator.distributed_type.value)}
    metrics["adapter_dir"] = registered["adapter_dir"] = str(adapter_dir) if adapter_dir else None
    register_policy(ws, name, start, model_dir, run_id, rounds, registered)
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return PolicyTrainingResult(run_id, name, run_dir, model_dir, metrics)


def merge_adapter(start: StartPolicy, adapter_dir: Path, dtype: Any = None) -> Any:
    """The starting policy (loaded on the CPU, in `dtype`) with the saved LoRA adapter merged in."""
    from peft import PeftModel

    base, _ = load_causal_lm(start, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_policy(model: Any, tokenizer: Any, run_dir: Path,
                start: StartPolicy | None = None) -> tuple[Path, Path | None]:
    """(merged model folder, adapter folder or None): the merged folder loads like any policy.

    A QLoRA model's adapter is merged into a bf16 copy of the starting policy (`start`), not into its 4-bit
    weights: merging there would round the update away and leave a folder only bitsandbytes can load."""
    adapter_dir = None
    if hasattr(model, "peft_config"):
        adapter_dir = run_dir / "adapter"
        model.save_pretrained(str(adapter_dir))
        if is_quantized(model):
            import torch

            if start is None:
                raise ValueError("save_policy: a 4-bit model needs its starting policy to merge into")
            model = merge_adapter(start, adapter_dir, torch.bfloat16)
        else:
            model = model.merge_and_unload()
    model_dir = run_dir / "model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return model_dir, adapter_dir


def register_policy(ws: WorkspaceLike, name: str, start: StartPolicy, model_dir: Path, run_id: int, rounds: list[int],
                    metrics: dict[str, Any]) -> int:
    """The new policy row: parent = the starting policy (registered as external if it was a bare folder)."""
    from store.models import add_model
    from training.models import parent_id

    return add_model(ws.db, name, "policy", base=start.location, path=str(model_dir),
                     parent_id=parent_id(ws.db, start.parent_id, start.name, start.location),
                     round=max(rounds) if rounds else None, run_id=run_id, metrics=metrics)
