"""Reward-model data: tokenization and pairs files. (The prompt as text is `store.rows.prompt_string`; the pairs
snapshot a run trains on, split by prompt, is training/snapshot.py's: every trainer shares it.)

Every text the reward model sees, in training and in scoring, goes through `encode`: prompt + response (+ EOS for
decoders), truncated from the left so the response's end (where a decoder reads its score) always survives; or,
for response-mean pooling (reward.pooling), the pair `[CLS] prompt [SEP] response [SEP]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from store.reading import jsonl_records, require
from store.rows import prompt_string  # the prompt as the reward model reads it (with its tokenizer's template)


def encode(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int,
           append_eos: bool, pair: bool = False) -> list[list[int]]:
    """Token ids of prompt + response (+ EOS), cut from the left to `max_length`, special tokens kept. `pair`
    (response-mean pooling): `[CLS] prompt [SEP] response [SEP]`, the longer part cut from its beginning."""
    eos = tokenizer.eos_token if append_eos and tokenizer.eos_token else ""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        if pair:
            return tokenizer(list(prompts), list(responses), truncation="longest_first",
                             max_length=max_length)["input_ids"]
        texts = [p + r + eos for p, r in zip(prompts, responses, strict=True)]
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def read_pairs_file(path: str | Path) -> pd.DataFrame:
    """Pairs from a JSONL(.gz) file of {prompt, chosen, rejected} objects (the shared/data shape), all 'eval'."""
    rows = []
    for line, obj in jsonl_records(path):
        prompt = require(obj, "prompt", (str, list), path, line)
        rows.append({
            "prompt_key": json.dumps(prompt) if isinstance(prompt, list) else prompt,
            "prompt_text": prompt if isinstance(prompt, str) else None,
            "prompt_messages": prompt if isinstance(prompt, list) else None,
            "chosen": require(obj, "chosen", str, path, line),
            "rejected": require(obj, "rejected", str, path, line),
            "margin": float(obj.get("margin", 1.0)), "part": "eval",
        })
    return pd.DataFrame(rows)


def to_dataset(pairs: pd.DataFrame, tokenizer: Any, max_length: int, append_eos: bool,
               margin_scale: float | None = None, pair: bool = False) -> Any:
    """A `datasets.Dataset` of chosen_ids / rejected_ids (+ margin) / length, what TRL's collator takes."""
    from datasets import Dataset

    prompts = [prompt_string(t, m, tokenizer) for t, m in zip(pairs["prompt_text"], pairs["prompt_messages"],
                                                              strict=True)]
    chosen = encode(tokenizer, prompts, list(pairs["chosen"]), max_length, append_eos, pair)
    rejected = encode(tokenizer, prompts, list(pairs["rejected"]), max_length, append_eos, pair)
    columns: dict[str, Any] = {"chosen_ids": chosen, "rejected_ids": rejected,
                               "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)]}
    if margin_scale is not None:
        columns["margin"] = [max(float(gap) - 1.0, 0.0) * margin_scale for gap in pairs["margin"].fillna(1.0)]
    return Dataset.from_dict(columns)


def to_ranking_dataset(rankings: pd.DataFrame, tokenizer: Any, max_length: int, append_eos: bool,
                       pair: bool = False) -> Any:
    """A `datasets.Dataset` of whole rankings (loss "ranking", reward/train.py): `ranking_ids` (each item's token
    ids, encoded as `encode` does for a pair's side), `groups` (their group indices, 0 = best) and `length` (the
    longest item, for the length-grouped sampler)."""
    from datasets import Dataset

    prompts, texts, sizes = [], [], []
    for text, messages, responses in zip(rankings["prompt_text"], rankings["prompt_messages"],
                                         rankings["responses"], strict=True):
        prompt = prompt_string(text, messages, tokenizer)
        prompts += [prompt] * len(responses)
        texts += [str(r) for r in responses]
        sizes.append(len(responses))
    ids = encode(tokenizer, prompts, texts, max_length, append_eos, pair)
    grouped, start = [], 0
    for n in sizes:
        grouped.append(ids[start:start + n])
        start += n
    return Dataset.from_dict({"ranking_ids": grouped, "groups": [[int(g) for g in gs] for gs in rankings["groups"]],
                              "length": [max(len(x) for x in items) for items in grouped]})
