"""Has the policy forgotten what it knew? A fixed held-out set of questions with reference answers, scored by the
reference answers' log-likelihood under the new policy against the base policy.

Per item: the mean log-probability per token of the reference answer (its tokens and the end-of-sequence token)
given the question in the policy's chat template, as sampling formats it (rl.sampling.prompt_ids). Per policy: the
mean over items (nats per token; exp(-x) is the answers' perplexity). The check: change = new - base; a change below
-threshold warns (the default 0.1 nats/token is a perplexity about 10% higher than the base's). DPO and PPO are
meant to move the policy on its own prompts; a drop on general questions they never saw is forgetting (or damage).

The set is a JSONL file of {"id", "prompt", "answer"} (the prompt a string or a list of chat messages); rankloop ships
`rankloop/data/heldout_general.jsonl` (40 general questions, Apache-2.0, see that folder's README), which the loop
uses unless `[loop] forgetting_set` names another.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_THRESHOLD = 0.1


@dataclass(frozen=True)
class HeldOutItem:
    id: str
    messages: list[dict[str, str]]  # the question as chat turns
    answer: str


def load_heldout(path: str | Path) -> list[HeldOutItem]:
    """The items of a held-out JSONL file; a bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the forgetting check's held-out set is missing")
    items: list[HeldOutItem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{where}: each line must be an object with prompt and answer")
        prompt, answer = row.get("prompt"), row.get("answer")
        if isinstance(prompt, str) and prompt.strip():
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m and "content" in m
                                                         for m in prompt):
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        else:
            raise ValueError(f"{where}: prompt must be a non-empty string or a list of {{role, content}} messages")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{where}: answer must be a non-empty string")
        items.append(HeldOutItem(str(row.get("id", number)), messages, answer))
    if not items:
        raise ValueError(f"{path}: the held-out set has no items")
    return items


def answer_logliks(model: Any, tokenizer: Any, items: list[HeldOutItem], device: str | None = None,
                   batch_size: int = 8) -> list[float]:
    """Per item: the mean log-probability per token of its reference answer (plus end of sequence) given its
    question, under `model`."""
    import torch

    from rl.sampling import prompt_ids

    device = device or str(next(model.parameters()).device)
    eos = tokenizer.eos_token_id
    rows = []
    for item in items:
        p = prompt_ids(tokenizer, item.messages)
        a = tokenizer(item.answer, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        rows.append((p, a))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    out = [0.0] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                width = max(len(p) + len(a) for p, a in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, L), right padding
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, (p, a) in enumerate(batch):
                    ids[b, :len(p) + len(a)] = torch.tensor(p + a)
                    mask[b, :len(p) + len(a)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, L, V)
                logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
                for b, (p, a) in enumerate(batch):  # token t is predicted at position t - 1
                    out[start + b] = logp[b, len(p) - 1:len(p) + len(a) - 1].mean().item()
    finally:
        model.train(was_training)
    return out


def forgetting_check(new: tuple[Any, Any], base: tuple[Any, Any], items: list[HeldOutItem],
                     threshold: float = DEFAULT_THRESHOLD, device: str | None = None,
                     base_logliks: list[float] | None = None) -> dict[str, Any]:
    """Compare (model, tokenizer) `new` with `base` on `items`: mean log-likelihood per token of the reference
    answers under each, the change (new - base, nats per token), the share of items that got less likely, and
    `warn` when the change is below -threshold. `base_logliks`: the base's per-item values when already known."""
    if threshold < 0:
        raise ValueError(f"forgetting threshold: must be >= 0, got {threshold}")
    new_ll = answer_logliks(*new, items, device)
    base_ll = base_logliks if base_logliks is not None else answer_logliks(*base, items, device)
    if len(base_ll) != len(new_ll):
        raise ValueError(f"base log-likelihoods: {len(base_ll)} values for {len(new_ll)} items")
    change = statistics.fmean(new_ll) - statistics.fmean(base_ll)
    worse = sum(n < b for n, b in zip(new_ll, base_ll, strict=True)) / len(new_ll)
    result = {"items": len(new_ll), "loglik_new": statistics.fmean(new_ll), "loglik_base": statistics.fmean(base_ll),
              "change": change, "worse_share": worse, "threshold": threshold, "warn": change < -threshold,
              "per_item_new": new_ll, "per_item_base": list(base_ll)}
    result["message"] = forgetting_line(result)
    return result


def forgetting_line(r: dict[str, Any]) -> str:
    """One line saying what the check found."""
    text = (f"held-out reference answers ({r['items']} items): mean log-likelihood {r['loglik_new']:.3f} nats/token "
            f"vs base {r['loglik_base']:.3f}, change {r['change']:+.3f} ({r['worse_share']:.0%} of items less likely)")
    if r["warn"]:
        text += f"; WARNING: below -{r['threshold']} nats/token, the policy may be forgetting what the base knew"
    return text
