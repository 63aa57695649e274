"""The shapes of preference data as trainers and exports read them: the prompt as text or as chat messages, and
one TRL row per record (pairs, KTO labels, SFT targets) in each style. `store/export.py` writes these rows to a
file; the trainers (reward/, rl/) build their datasets from the same function, so an export is what training saw.

A record is a dict (or a pandas row) with `prompt_text` (the prompt's original text, or None), `prompt_messages`
(its chat messages) and the kind's own fields: `chosen`/`rejected` (pairs), `completion` + `label` (kto),
`completion` (sft); see `store.pairs` and `store.labels`.

Styles (TRL's dataset formats):
- "standard": `prompt` is a string (`prompt_string`), responses are their stored text, verbatim;
- "conversational": `prompt` is the message list, a response is [{"role": "assistant", "content": ...}]; an SFT row
  is the whole conversation ({"messages"});
- "prompt-completion": conversational SFT as {"prompt": messages, "completion": [assistant]}, so TRL computes the
  loss on the completion only (the SFT trainer's rows; pairs and KTO rows are as "conversational");
- "implicit": no `prompt`: chosen/rejected are prompt + response as one string (SFT: {"text"});
  "implicit-conversational": as the full message lists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def render_transcript(messages: Iterable[dict[str, str]]) -> str:
    """Chat messages as an HH-RLHF style transcript ending in "\\n\\nAssistant:"."""
    turns = "".join(f"\n\n{ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"


def _text(text: Any) -> str | None:
    """The original text, or None (also for pandas' NaN of a missing text read back from a file)."""
    return text if isinstance(text, str) and text else None


def prompt_messages(text: Any, messages: Any) -> list[dict[str, str]]:
    """The prompt as chat messages (a prompt known only by its text becomes one user turn)."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    if messages is not None and not (isinstance(messages, float) and math.isnan(messages)) and len(messages):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    return [{"role": "user", "content": _text(text) or ""}]


def prompt_string(text: Any, messages: Any, tokenizer: Any = None) -> str:
    """The prompt as one string: its original text when it had one, else its chat messages rendered with the
    tokenizer's chat template (when given one that has it), else as an HH transcript (`render_transcript`)."""
    if _text(text) is not None:
        return text
    messages = prompt_messages(None, messages)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_transcript(messages)


def _assistant(text: Any) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": str(text)}]


def trl_row(kind: str, r: Any, style: str) -> dict[str, Any]:
    """One TRL row of `kind` ("pairs", "kto" or "sft") for record `r` in `style` (see the module doc)."""
    if style in ("standard", "implicit"):
        p = prompt_string(r["prompt_text"], r["prompt_messages"])
        if kind == "pairs":
            if style == "implicit":
                return {"chosen": p + r["chosen"], "rejected": p + r["rejected"]}
            return {"prompt": p, "chosen": r["chosen"], "rejected": r["rejected"]}
        if kind == "kto":
            return {"prompt": p, "completion": r["completion"], "label": bool(r["label"])}
        return {"text": p + r["completion"]} if style == "implicit" else {"prompt": p, "completion": r["completion"]}
    m = prompt_messages(r["prompt_text"], r["prompt_messages"])
    if kind == "pairs":
        if style == "implicit-conversational":
            return {"chosen": m + _assistant(r["chosen"]), "rejected": m + _assistant(r["rejected"])}
        return {"prompt": m, "chosen": _assistant(r["chosen"]), "rejected": _assistant(r["rejected"])}
    if kind == "kto":
        return {"prompt": m, "completion": _assistant(r["completion"]), "label": bool(r["label"])}
    if style == "prompt-completion":
        return {"prompt": m, "completion": _assistant(r["completion"])}
    return {"messages": m + _assistant(r["completion"])}


def records_of(frame: Any) -> list[dict[str, Any]]:
    """A frame's rows as records (a list of dicts passes through)."""
    return frame if isinstance(frame, list) else frame.to_dict("records")


def trl_rows(kind: str, records: Any, style: str) -> list[dict[str, Any]]:
    """`trl_row` for every record (a list of dicts or a frame)."""
    return [trl_row(kind, r, style) for r in records_of(records)]
