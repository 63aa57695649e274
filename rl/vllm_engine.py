"""Sampling with vLLM (`--engine vllm`, `[generation] engine = "vllm"`): the same batches, seeds and stored
structure as the HF path in rl/sampling.py, decoded by `vllm.LLM`.

vLLM is an optional dependency (the `gpu` extra): nothing here imports it at module level, and `require_vllm`
says how to install it before any work is written. One `VLLMSampler` holds one `vllm.LLM` (one base model); a
policy that is a LoRA adapter on that base is served through vLLM's LoRA support (`LoRARequest`), a policy
without an adapter is its own (merged) folder. Seeds: the prompts of batch b (batches as
`rl.sampling.sampling_batches` makes them, length-sorted, `prompts_per_batch` each) are requests with the
per-request seed `seed + b`, each asking for k samples (`n=k`), so a rerun with the same seed draws the same
responses and each response stores the same `seed`, `batch` and `index` as with HF.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'rankloop[gpu]'"


class EngineUnavailable(ValueError):
    """The sampling engine asked for cannot run here (not installed, or no CUDA device)."""


def require_vllm() -> None:
    """Raise `EngineUnavailable` naming the `gpu` extra when vLLM is not importable (checked without importing it:
    cheap, and before anything is read or written)."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(
            f"engine 'vllm': vLLM is not installed; install the gpu extra (`{INSTALL_HINT}`, CUDA machines) or "
            "sample with --engine hf")


def require_cuda(device: str) -> None:
    if not str(device).startswith("cuda"):
        raise EngineUnavailable(f"engine 'vllm' samples on a CUDA GPU, and the device here is {device!r}; "
                                "use --engine hf on this machine")


def _lora_rank(adapter_path: str) -> int:
    try:
        config = json.loads((Path(adapter_path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"LoRA adapter {adapter_path}: cannot read adapter_config.json ({e})") from e
    return int(config.get("r") or 16)


class VLLMSampler:
    """One vLLM engine for the policies of a sampling run: `base` (a folder or hub id) and, for each policy row
    that is a LoRA adapter on it, a LoRARequest. `rows`: every policy row this run samples (ModelRow-like:
    `name`, `path`/`base` through `location`, `adapter_path`)."""

    def __init__(self, rows: list[Any], locations: list[str], dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None, seed: int = 0):
        require_vllm()
        from transformers import AutoConfig, AutoTokenizer
        from vllm import LLM

        bases = sorted(set(locations))
        if len(bases) > 1:
            raise ValueError(f"engine 'vllm' serves one base model per run, and these policies need {bases}: "
                             "sample them in separate runs or use --engine hf")
        self.base = bases[0]
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.base}: the tokenizer has no chat template, so chat prompts cannot be formatted")
        self.config = AutoConfig.from_pretrained(self.base)
        adapters = [r.adapter_path for r in rows if getattr(r, "adapter_path", None)]
        lora = {"enable_lora": True, "max_lora_rank": max(_lora_rank(a) for a in adapters),
                "max_loras": len(set(adapters))} if adapters else {}
        self.llm = LLM(model=self.base, tokenizer=self.base, dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, **lora)
        self.lora_ids = {a: i + 1 for i, a in enumerate(dict.fromkeys(adapters))}

    def lora_request(self, row: Any) -> Any:
        if not getattr(row, "adapter_path", None):
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"{row.name}", self.lora_ids[row.adapter_path], row.adapter_path)

    def stop_ids(self) -> list[int]:
        """Every token that ends a response, as rl.sampling.eos_ids takes them (generation config, tokenizer)."""
        from transformers import GenerationConfig

        try:
            ids = GenerationConfig.from_pretrained(self.base).eos_token_id
        except OSError:
            ids = None
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        if not ids:
            raise ValueError("the model defines no EOS token: responses would never end")
        return ids

    def sample(self, row: Any, encoded: list[list[int]], params: Any, batch: int) -> list[list[Any]]:
        """k completions (rl.sampling.Completion) for each prompt of batch `batch` (token ids), seed params.seed."""
        from vllm import SamplingParams as VSamplingParams

        from rl.sampling import Completion, split_completion

        stop = self.stop_ids()
        sp = VSamplingParams(n=params.k, temperature=float(params.temperature), top_p=float(params.top_p),
                             top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
                             seed=params.seed, stop_token_ids=stop, skip_special_tokens=True)
        requests = [{"prompt_token_ids": ids} for ids in encoded]
        outputs = self.llm.generate(requests, sp, lora_request=self.lora_request(row), use_tqdm=False)
        out: list[list[Any]] = []
        for result in outputs:  # in request order
            samples = []
            for j, o in enumerate(sorted(result.outputs, key=lambda o: o.index)):
                tokens = list(o.token_ids)
                text_tokens, n, finished = split_completion(tokens, set(stop))
                if not finished and o.finish_reason == "stop":  # the EOS left out of token_ids: count it as HF does
                    finished, n = True, n + 1
                text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)
                samples.append(Completion(text, n, finished, params.seed, batch, j))
            out.append(samples)
        return out
