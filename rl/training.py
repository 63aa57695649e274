"""What the policy trainers (DPO, SFT, PPO) share: resolving the starting policy, the run row and its folder,
`--resume`, per-device TrainingArguments, and registering the trained policy with its lineage.

A trained policy is saved merged (LoRA folded into the weights) as an ordinary model folder, so that sampling,
evaluation and the next round's training load it like any other policy; the adapter is kept beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


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
    from store.models import UnknownModel, get_model

    try:
        row = get_model(db, policy)
    except UnknownModel:
        row = None
    if row is not None:
        if row.kind == "reward":
            raise ValueError(f"policy: {policy!r} is a reward model; name a policy")
        from rl.sampling import policy_location

        return StartPolicy(policy_location(row), row.adapter_path, row.id, row.name)
    local = Path(policy).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"policy: {local}: not a model folder (no config.json)")
        return StartPolicy(str(local.resolve()), None, None, local.name)
    if policy.startswith((".", "/", "~")):
        raise FileNotFoundError(f"policy: {policy}: no such folder")
    from rl.config import DEFAULT_POLICY

    if policy.lower() == DEFAULT_POLICY:
        raise FileNotFoundError(f"policy: {policy!r} is not in this workspace yet: run `rankloop models prepare`")
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
    from reward.device import resolve_device

    return quantization_config(config.quantization, resolve_device(config.device))


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def lora_config(config: Any, task: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, task_type=task,
                      target_modules=list(config.lora_target_modules) or "all-linear")


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def device_defaults(config: Any, n_params: int) -> Any:
    from reward.device import training_defaults

    return training_defaults(config.device, n_params, config.bf16, config.gradient_checkpointing)


def trainer_kwargs(config: Any, run_dir: Path, dev: Any, has_eval: bool, progress: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by the DPO and SFT configs (transformers 5: `activation_checkpointing`)."""
    return dict(
        output_dir=str(run_dir), seed=config.seed, data_seed=config.seed,
        learning_rate=config.effective_learning_rate, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, warmup_steps=config.warmup_ratio,
        use_cpu=dev.device == "cpu", bf16=dev.bf16, activation_checkpointing=dev.gradient_checkpointing,
        eval_strategy="steps" if has_eval else "no", eval_steps=config.eval_steps, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps, report_to=list(config.report_to) or "none",
        disable_tqdm=not progress, dataloader_num_workers=0, max_length=config.max_length,
    )


def resume_config(ws: Any, kind: str, cls: type, run: int | str,
                  overrides: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(run id, its recorded config with `overrides`); `run` is an id or "latest" (newest unfinished `kind` run)."""
    from rl.config import config_from_dict
    from store.runs import get_run, list_runs

    if run == "latest":
        candidates = [r for r in list_runs(ws.db, kind=kind) if r.status != "succeeded"]
        if not candidates:
            raise ValueError(f"--resume: no unfinished {kind} run in this workspace to resume")
        row = candidates[-1]
    else:
        row = get_run(ws.db, int(run))
    if row.kind != kind:
        raise ValueError(f"--resume: run {row.id} is a {row.kind!r} run, not a {kind} run")
    if row.status == "succeeded":
        raise ValueError(f"--resume: run {row.id} already succeeded; start a new run instead")
    saved = config_from_dict(cls, row.config["config"], where=f"run {row.id} config: ")
    return row.id, config_from_dict(cls, overrides or {}, saved, where="command line: ")


def start_policy_run(ws: Any, kind: str, config: Any, snapshot: dict[str, Any], start: StartPolicy,
                     resume_from: int | None) -> tuple[int, Path]:
    """A run row (status running) and its folder; a resumed run reuses the old folder and closes the old row."""
    from store.runs import finish_run, get_run, start_run, update_run

    record = {"config": asdict(config), "policy_location": start.location, "resumed_from": resume_from}
    run_id = start_run(ws.db, kind, record, snapshot)
    run_dir = Path(get_run(ws.db, resume_from).output_path) if resume_from is not None else \
        ws.runs_dir / f"{kind}-{run_id}"
    update_run(ws.db, run_id, output_path=str(run_dir))
    if resume_from is not None and get_run(ws.db, resume_from).status == "running":
        finish_run(ws.db, resume_from, "cancelled", error=f"interrupted; resumed by run {run_id}")
    return run_id, run_dir


@contextlib.contextmanager
def policy_run(ws: Any, kind: str, config: Any, snapshot: dict[str, Any], start: StartPolicy,
               resume_from: int | None) -> Iterator[tuple[int, Path, Any]]:
    """(run id, run folder, QLoRA quantization config or None) for the body that trains; the run row is closed as
    failed (cancelled on Ctrl-C) when the body raises. QLoRA's errors (no CUDA, no bitsandbytes) come before the row
    exists."""
    quantization = qlora(config)
    run_id, run_dir = start_policy_run(ws, kind, config, snapshot, start, resume_from)
    try:
        yield run_id, run_dir, quantization
    except BaseException as e:
        fail_run(ws, run_id, e)
        raise


def history_callback() -> Any:
    """A TrainerCallback keeping every logged number (loss, margins, scores...) and the step training (re)started
    from, for the run row's metrics."""
    from transformers import TrainerCallback

    class History(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.logs.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                                if isinstance(v, int | float)}})

    return History()


def trainer_callbacks(history: Any, config: Any, has_eval: bool, callbacks: list[Any] | None) -> list[Any]:
    """History, the non-finite-loss stop, the caller's callbacks and early stopping when there is a held-out set."""
    from transformers import EarlyStoppingCallback

    from reward.checks import finite_loss_callback

    extra = [history, finite_loss_callback(), *(callbacks or [])]
    if has_eval and config.early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return extra


def finish_policy(ws: Any, model: Any, tokenizer: Any, start: StartPolicy, run_id: int, run_dir: Path, name: str,
                  rounds: list[int], metrics: dict[str, Any], registered: dict[str, Any]) -> PolicyTrainingResult:
    """Save the merged policy (and adapter), register it with `registered` as its metrics, close the run row with
    `metrics`."""
    from store.runs import finish_run

    model_dir, adapter_dir = save_policy(model, tokenizer, run_dir, start)
    metrics["adapter_dir"] = registered["adapter_dir"] = str(adapter_dir) if adapter_dir else None
    register_policy(ws, name, start, model_dir, run_id, rounds, registered)
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return PolicyTrainingResult(run_id, name, run_dir, model_dir, metrics)


def last_checkpoint(run_dir: Path, resume_from: int | None) -> str | None:
    """The newest complete checkpoint of a resumed run, every file read back first (reward/checks.py)."""
    from reward.checks import resume_checkpoint

    return resume_checkpoint(run_dir, resume_from)


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
            from peft import PeftModel

            if start is None:
                raise ValueError("save_policy: a 4-bit model needs its starting policy to merge into")
            base, _ = load_causal_lm(start, dtype=torch.bfloat16)
            model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        else:
            model = model.merge_and_unload()
    model_dir = run_dir / "model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return model_dir, adapter_dir


def register_policy(ws: Any, name: str, start: StartPolicy, model_dir: Path, run_id: int, rounds: list[int],
                    metrics: dict[str, Any]) -> int:
    """The new policy row: parent = the starting policy (registered as external if it was a bare folder)."""
    from store.models import UnknownModel, add_model, get_model

    parent_id = start.parent_id
    if parent_id is None:
        try:
            parent_id = get_model(ws.db, start.name).id
        except UnknownModel:
            parent_id = add_model(ws.db, start.name, "external", base=start.location, path=start.location)
    return add_model(ws.db, name, "policy", base=start.location, path=str(model_dir), parent_id=parent_id,
                     round=max(rounds) if rounds else None, run_id=run_id, metrics=metrics)


def fail_run(ws: Any, run_id: int, e: BaseException) -> None:
    from store.runs import finish_run

    finish_run(ws.db, run_id, "cancelled" if isinstance(e, KeyboardInterrupt) else "failed",
               error=f"{type(e).__name__}: {e}"[:2000])
