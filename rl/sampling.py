"""Sampling k candidate responses per prompt from a policy, and queueing them as comparisons for reviewers.

`generate_candidates` reads the prompts that have no comparison yet (one short unit of work), closes the
database, loads the model once, and decodes in batches: prompts sorted by token length (little padding), left
padded, each prompt decoded k times with the KV cache. Each batch has its own seed (`seed + batch index`),
stored with its responses with the sampling parameters. Each batch's responses and its comparisons (one per
prompt) are written in one transaction as soon as the batch is decoded, so reviewers can rank the first prompts
while the rest are still sampled, and an interrupted run keeps every batch it finished.

`params.engine` picks what decodes: 'hf' (here, the CPU default) or 'vllm' (rl/vllm_engine.py: the same batches,
per-request seeds `seed + b`, the same stored fields, plus `engine` in each response's params). `check_engine`
refuses 'vllm' without vLLM installed, naming the `gpu` extra, before anything is read or written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl.config import SamplingParams  # noqa: F401  (declared with the other configs; imported from here too)
from rl.config import check_int as _check_int
from rl.device import pick_device
from store.batch import Batch, Comparison, Prompt, Response, write_batch
from store.db import write
from store.models import ModelRow
from store.prompts import prompts_with_comparisons, prompts_without_comparisons

if TYPE_CHECKING:
    import torch

SOURCE = "sample"
logger = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str  # EOS and padding stripped
    new_tokens: int  # generated tokens, the EOS included
    finished: bool  # ended with EOS (not cut at max_new_tokens)
    seed: int
    batch: int
    index: int  # which of the prompt's k samples


@dataclass
class SamplingResult:
    prompts: int
    responses: int
    comparisons: int
    comparison_ids: list[int]
    skipped: int  # prompts another job queued while this one sampled: not written twice
    new_tokens: int
    finished: int
    batches: int
    load_s: float
    generate_s: float
    device: str

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.generate_s if self.generate_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "comparison_ids"}
        out["tokens_per_s"] = round(self.tokens_per_s, 1)
        return out


@dataclass
class SamplingProgress:
    """Where `generate_candidates` stands: reported once the model is loaded, then after each written batch."""
    prompts_total: int  # prompts picked for this run
    answers_total: int  # prompts_total * k
    prompts_done: int = 0  # prompts whose batch is decoded (written, or skipped because another job queued them)
    answers_written: int = 0  # responses stored, each in a queued comparison
    comparisons: int = 0  # comparisons queued so far
    new_tokens: int = 0
    finished: int = 0  # answers that ended with EOS
    generate_s: float = 0.0  # decoding time so far (loading and writing excluded)
    load_s: float = 0.0
    device: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.generate_s if self.generate_s > 0 else 0.0


def policy_location(row: ModelRow) -> str:
    """The folder (or hub id) to load `row` from."""
    if row.path:
        if not Path(row.path).is_dir():
            raise FileNotFoundError(f"model {row.name!r}: folder {row.path} is missing")
        return row.path
    if row.base:
        return row.base
    raise ValueError(f"model {row.name!r} has neither a folder nor a hub id")


def load_policy(location: str, device: str = "cpu", dtype: Any = None, adapter_path: str | None = None):
    """(model, tokenizer) ready for generation on `device`; a LoRA adapter is merged in for speed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if not tokenizer.chat_template:
        raise ValueError(f"{location}: the tokenizer has no chat template, so chat prompts cannot be formatted")
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    return model.to(device).eval(), tokenizer


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model defines no EOS token: responses would never end")
    return ids


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], max_len: int | None = None) -> list[int]:
    """Token ids of `messages` in the chat template, ending with the assistant's turn opening.

    A prompt longer than `max_len` keeps its last `max_len` tokens (the end of the conversation matters most).
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_len:] if max_len and len(ids) > max_len else ids


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (P, L)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (P, L), 1 on real tokens
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def split_completion(tokens: list[int], stop: set[int]) -> tuple[list[int], int, bool]:
    """(text tokens, new tokens counted up to and with EOS, finished) for one generated row."""
    for i, t in enumerate(tokens):
        if t in stop:
            return tokens[:i], i + 1, True
    return tokens, len(tokens), False


def _cache_kwarg() -> str:
    """The name `generate` takes a ready KV cache under (transformers 5 renames `past_key_values` to `cache`)."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"


def _generate_shared_prefix(model: Any, ids: torch.Tensor, mask: torch.Tensor, k: int, **kw: Any) -> torch.Tensor:
    """Prefill each prompt once, copy its KV cache k times, then decode the P * k rows together."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (P, L): left padding shifts positions, as `generate` does
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
    cache = out.get("cache")  # KV of the first L - 1 tokens, batch P
    cache = out.past_key_values if cache is None else cache
    cache.batch_repeat_interleave(k)  # batch P * k, prompt-major
    return model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0),
                          **{_cache_kwarg(): cache}, **kw)  # (P * k, L + T)


def _encode(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]],
            params: SamplingParams) -> list[list[int]]:
    limit = getattr(model.config, "max_position_embeddings", None)
    max_prompt = max(1, limit - params.max_new_tokens) if limit else None
    return [prompt_ids(tokenizer, conv, max_prompt) for conv in conversations]


def _length_order(encoded: list[list[int]]) -> list[int]:
    return sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))  # similar lengths share a batch


def sampling_batches(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]],
                     params: SamplingParams) -> list[list[int]]:
    """The conversations' indices in the batches `sample_completions` decodes them in (batch b uses seed + b)."""
    order = _length_order(_encode(model, tokenizer, conversations, params))
    per_batch = params.prompts_per_batch
    return [order[start:start + per_batch] for start in range(0, len(order), per_batch)]


def sample_completions(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]],
                       params: SamplingParams, device: str = "cpu",
                       progress: Callable[[int, int], None] | None = None,
                       share_prefix: bool = True) -> list[list[Completion]]:
    """k completions for each conversation, decoded in length-sorted, left-padded batches with the KV cache.

    With `share_prefix` each prompt is prefilled once and its KV cache copied to its k samples (the same tokens
    as `num_return_sequences=k`, which prefills every copy); models whose cache cannot be copied fall back.
    """
    import torch

    stop = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    encoded = _encode(model, tokenizer, conversations, params)
    order = _length_order(encoded)
    out: list[list[Completion]] = [[] for _ in conversations]
    per_batch, k = params.prompts_per_batch, params.k
    share = share_prefix and not model.config.is_encoder_decoder
    for b, start in enumerate(range(0, len(order), per_batch)):
        idx = order[start:start + per_batch]
        input_ids, mask = _left_pad([encoded[i] for i in idx], pad_id)  # (P, L)
        input_ids, mask = input_ids.to(device), mask.to(device)
        seed = params.seed + b
        kw = dict(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p),
                  top_k=params.top_k, max_new_tokens=params.max_new_tokens, use_cache=True, pad_token_id=pad_id,
                  eos_token_id=stop)
        seqs = None
        with torch.inference_mode():
            if share and input_ids.shape[1] > 1:
                try:
                    torch.manual_seed(seed)  # seeds every device's generator
                    seqs = _generate_shared_prefix(model, input_ids, mask, k, **kw)
                except (AttributeError, TypeError, NotImplementedError) as e:
                    logger.warning("sharing the prompt's KV cache failed (%s); prefilling each sample instead", e)
                    share = False
            if seqs is None:
                torch.manual_seed(seed)
                seqs = model.generate(input_ids=input_ids, attention_mask=mask, num_return_sequences=k, **kw)
        # seqs: (P * k, L + T), rows prompt-major: prompt p's samples are rows p*k .. p*k + k-1
        new = seqs[:, input_ids.shape[1]:].cpu().tolist()  # (P * k, T), T <= max_new_tokens
        for row, tokens in enumerate(new):
            p, j = divmod(row, k)
            text_tokens, n, finished = split_completion(tokens, set(stop))
            text = tokenizer.decode(text_tokens, skip_special_tokens=True)
            out[idx[p]].append(Completion(text, n, finished, seed, b, j))
        if progress is not None:
            progress(min(start + per_batch, len(order)), len(order))
    return out


class _CpuShare:
    """Torch threads for a niced background job on CPU: as many as the cores other processes left idle.

    Decoding waits at every step for its slowest thread, so a niced job running one thread per core on a machine
    where something else keeps one core busy crawls (2 tokens/s against 21 with one thread on the free core,
    measured on 2 cores). Before each batch this counts the cores others used since the last call (/proc/stat's
    busy time less this process's own CPU time) and sets the threads to the rest, at least 1 and at most what
    torch started with. Off (None) where it cannot help or would surprise: not on CPU, not niced (a foreground
    command competes at equal priority), OMP_NUM_THREADS set, or no /proc/stat.
    """

    def __init__(self, device: str) -> None:
        import torch

        self.cap = torch.get_num_threads()
        self.enabled = device == "cpu" and self.cap > 1 and os.nice(0) > 0 and "OMP_NUM_THREADS" not in os.environ
        self.last = self._sample() if self.enabled else None
        self.enabled = self.last is not None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(wall s, busy CPU-s of the whole machine, CPU-s of this process)."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        except (OSError, ValueError):
            return None
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        return time.monotonic(), busy, time.process_time()

    def threads(self) -> int | None:
        """Set and return the thread count for the next batch; None when off."""
        import torch

        if not self.enabled:
            return None
        now = self._sample()
        if now is None:
            return None
        wall = now[0] - self.last[0]
        if wall >= 0.2:  # too short an interval (10 ms ticks) says nothing: keep the current count
            others = max(0.0, (now[1] - self.last[1]) - (now[2] - self.last[2])) / wall
            free = (os.cpu_count() or self.cap) - others
            torch.set_num_threads(max(1, min(self.cap, int(free + 0.25))))
            self.last = now
        return torch.get_num_threads()


def check_engine(engine: str) -> None:
    """A clear error, before any work, when `engine` cannot sample here ('vllm' without vLLM installed names the
    `gpu` extra); 'hf' always can."""
    if engine == "vllm":
        from rl.vllm_engine import require_vllm

        require_vllm()
    elif engine != "hf":
        raise ValueError(f"engine: must be 'hf' or 'vllm', got {engine!r}")


def workspace_engine(ws: Any) -> str:
    """The workspace's `[generation] engine` ('hf' for a workspace-like object without a parsed rankloop.toml)."""
    generation = getattr(getattr(ws, "config", None), "generation", None)
    return getattr(generation, "engine", "hf")


class _HFEngine:
    """transformers' generate: each policy loaded once (a LoRA adapter merged), batches decoded with the KV cache."""

    def __init__(self, rows: list[ModelRow], choice: Any) -> None:
        self.choice = choice
        self.loaded = {row.name: load_policy(policy_location(row), choice.device, choice.dtype, row.adapter_path)
                       for row in rows}
        self.first = self.loaded[rows[0].name]

    def batches(self, conversations: list[list[dict[str, str]]], params: SamplingParams) -> list[list[int]]:
        return sampling_batches(*self.first, conversations, params)

    def sample(self, row: ModelRow, conversations: list[list[dict[str, str]]], params: SamplingParams,
               batch: int) -> list[list[Completion]]:
        out = sample_completions(*self.loaded[row.name], conversations, params, self.choice.device)
        for cs in out:
            for c in cs:
                c.batch = batch
        return out


class _VLLMEngine:
    """vLLM (rl/vllm_engine.py) behind the same two calls, the prompts encoded as the HF path encodes them."""

    def __init__(self, rows: list[ModelRow], choice: Any) -> None:
        from rl.vllm_engine import VLLMSampler

        dtype = "bfloat16" if getattr(choice, "bf16", False) else "float16"
        self.sampler = VLLMSampler(rows, [policy_location(r) for r in rows], dtype=dtype)
        self.max_len = getattr(self.sampler.config, "max_position_embeddings", None)

    def _encode(self, conversations: list[list[dict[str, str]]], params: SamplingParams) -> list[list[int]]:
        max_prompt = max(1, self.max_len - params.max_new_tokens) if self.max_len else None
        return [prompt_ids(self.sampler.tokenizer, conv, max_prompt) for conv in conversations]

    def batches(self, conversations: list[list[dict[str, str]]], params: SamplingParams) -> list[list[int]]:
        order = _length_order(self._encode(conversations, params))
        per_batch = params.prompts_per_batch
        return [order[start:start + per_batch] for start in range(0, len(order), per_batch)]

    def sample(self, row: ModelRow, conversations: list[list[dict[str, str]]], params: SamplingParams,
               batch: int) -> list[list[Completion]]:
        return self.sampler.sample(row, self._encode(conversations, params), params, batch)


def vllm_completions(row: ModelRow, conversations: list[list[dict[str, str]]], params: SamplingParams,
                     choice: Any) -> list[list[Completion]]:
    """`sample_completions` with vLLM for one policy row (`eval policy --engine vllm`): the same length-sorted
    batches and seeds (batch b: seed + b), the engine started for this call and shut down after it."""
    import gc

    check_engine("vllm")
    from rl.vllm_engine import require_cuda

    require_cuda(choice.device)
    engine = _VLLMEngine([row], choice)
    try:
        out: list[list[Completion]] = [[] for _ in conversations]
        for b, idx in enumerate(engine.batches(conversations, params)):
            drawn = engine.sample(row, [conversations[i] for i in idx], replace(params, seed=params.seed + b), b)
            for i, cs in zip(idx, drawn, strict=True):
                out[i] = cs
        return out
    finally:
        del engine
        gc.collect()


def _engine(name: str, model_row: ModelRow, previous: ModelRow | None, choice: Any) -> Any:
    rows = [model_row] + ([previous] if previous is not None else [])
    return _VLLMEngine(rows, choice) if name == "vllm" else _HFEngine(rows, choice)


def _batch_rows(prompts: list[Any], completions: list[list[tuple[ModelRow, Completion]]], params: SamplingParams,
                round: int, required_reviewers: int, threads: int | None = None, mixed: bool = False) -> Batch:
    """The prompts (already stored: reused by content hash), their responses (each with the model that wrote it)
    and one comparison per prompt."""
    batch = Batch()
    for p, samples in zip(prompts, completions, strict=True):
        batch.prompts.append(Prompt(p.id, p.messages, p.text, p.source, p.split, p.tags))
        for model_row, c in samples:
            batch.responses.append(Response(
                (p.id, c.index), p.id, c.text, source=SOURCE, model_id=model_row.id, model_name=model_row.name,
                seed=c.seed, params={
                    "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                    "max_new_tokens": params.max_new_tokens, "finished": c.finished, "new_tokens": c.new_tokens,
                    "batch": c.batch, "index": c.index, "k": params.k, "engine": params.engine,
                    **({"threads": threads} if threads is not None else {}),  # set by _CpuShare for this batch
                    **({"mix_previous": model_row is not samples[0][0]} if mixed else {}),
                },
            ))
        batch.comparisons.append(Comparison(
            p.id, p.id, [(p.id, c.index) for _, c in samples], source=SOURCE, round=round,
            required_reviewers=required_reviewers,
        ))
    return batch


def _write_new(db: str | Path, batch: Batch, prompt_ids: list[int]) -> tuple[Any, int]:
    """Write `batch` except the prompts another job queued meanwhile; (written, how many were skipped)."""

    def work(con) -> tuple[Any, int]:
        taken = prompts_with_comparisons(con, prompt_ids)  # queued by another job meanwhile
        todo = Batch(
            prompts=[p for p in batch.prompts if p.key not in taken],
            responses=[r for r in batch.responses if r.prompt_key not in taken],
            comparisons=[c for c in batch.comparisons if c.prompt_key not in taken],
        )
        written = write_batch(con, todo)
        if written.prompts_new:
            raise RuntimeError("a sampled prompt no longer matches its stored row (content hash changed)")
        return written, len(taken)

    return write(db, work)


def generate_candidates(db: str | Path, model_row: ModelRow, *, n_prompts: int, params: SamplingParams,
                        round: int = 0, split: str | None = None, required_reviewers: int = 1,
                        device: str | None = None,
                        progress: Callable[[SamplingProgress], None] | None = None,
                        previous: ModelRow | None = None) -> SamplingResult:
    """Sample k candidates for up to `n_prompts` prompts without a comparison; queue one comparison per prompt.

    Each batch is written (its own transaction) as soon as it is decoded, and `progress` hears about it; a prompt
    another job queued meanwhile is left as that job wrote it. An error or an interruption keeps the batches
    written before it. With `previous` (`round next --mix-previous`: the policy's parent), each comparison holds
    k - 1 candidates from `model_row` and one from `previous` (seed + 10,000 + batch), so reviewers compare
    versions.
    """
    _check_int("prompts", n_prompts, 1)
    _check_int("round", round, 0)
    _check_int("required_reviewers", required_reviewers, 1)
    check_engine(params.engine)  # vLLM missing: said before anything is read or written
    if model_row.kind != "policy":
        raise ValueError(f"model {model_row.name!r} is a {model_row.kind} model; sampling needs a policy")
    policy_location(model_row)  # a missing folder fails here, before any work
    if previous is not None:
        policy_location(previous)
    choice = pick_device(device)
    if params.engine == "vllm":
        from rl.vllm_engine import require_cuda

        require_cuda(choice.device)
    prompts = prompts_without_comparisons(db, n_prompts, split)  # the database is closed again after this
    if not prompts:
        return SamplingResult(0, 0, 0, [], 0, 0, 0, 0, 0.0, 0.0, "none")

    share = _CpuShare(choice.device)  # measures what others use while the model loads
    started = time.monotonic()
    engine = _engine(params.engine, model_row, previous, choice)
    keep = params.k - 1 if previous is not None else params.k  # candidates from model_row per prompt
    own = replace(params, k=max(2, keep)) if previous is not None else params
    state = SamplingProgress(len(prompts), len(prompts) * params.k, load_s=time.monotonic() - started,
                             device=choice.name + (" vllm" if params.engine == "vllm" else ""))
    if progress is not None:
        progress(replace(state))
    conversations = [p.messages for p in prompts]
    batches = engine.batches(conversations, params)
    comparison_ids: list[int] = []
    skipped = 0
    for b, idx in enumerate(batches):
        threads = share.threads()
        started = time.monotonic()
        # One batch's worth of prompts, already in length order: decoded as batch b with seed + b.
        batch_convs = [conversations[i] for i in idx]
        drawn = [[(model_row, c) for c in cs[:keep]] for cs in engine.sample(
            model_row, batch_convs, replace(own, seed=params.seed + b), b)]
        if previous is not None:
            theirs = engine.sample(previous, batch_convs, replace(params, k=2, seed=params.seed + 10_000 + b), b)
            for mine, cs in zip(drawn, theirs, strict=True):
                cs[0].index = keep
                mine.append((previous, cs[0]))
        state.generate_s += time.monotonic() - started
        samples = [[c for _, c in cs] for cs in drawn]
        for cs in samples:
            for c in cs:
                c.batch = b
        chosen = [prompts[i] for i in idx]
        rows = _batch_rows(chosen, drawn, params, round, required_reviewers, threads, previous is not None)
        written, taken = _write_new(db, rows, [p.id for p in chosen])
        skipped += taken
        comparison_ids += written.comparison_ids
        kept = [c for cs in samples for c in cs]
        state.prompts_done += len(idx)
        state.answers_written += written.responses
        state.comparisons += written.comparisons
        state.new_tokens += sum(c.new_tokens for c in kept)
        state.finished += sum(c.finished for c in kept)
        if progress is not None:
            progress(replace(state))
    return SamplingResult(
        prompts=len(prompts) - skipped, responses=state.answers_written, comparisons=state.comparisons,
        comparison_ids=comparison_ids, skipped=skipped, new_tokens=state.new_tokens, finished=state.finished,
        batches=len(batches), load_s=state.load_s, generate_s=state.generate_s, device=choice.name,
    )
