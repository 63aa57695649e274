"""TRL preference rows: `{"prompt", "chosen", "rejected"[, "margin"][, "reviewer"][, "source"]}`.

- Standard: prompt, chosen and rejected are strings. The prompt becomes one user message and keeps its text.
- Conversational: lists of {"role", "content"}; chosen and rejected each hold one assistant message.
- Implicit prompt: no "prompt" (or one of the other kind, as TRL's `maybe_extract_prompt` treats it): the prompt
  is the shared beginning of chosen and rejected: leading messages, or for strings the common prefix less a
  trailing space, which stays with the responses (TRL's `extract_prompt`).

Each row is a judgment ranking chosen over rejected, by the row's "reviewer", or else by the source (`--source`,
else the row's "source", else "trl"). Rows that rank the same two texts for the same prompt share one comparison
(several reviewers' judgments of it, agreeing or not); the same reviewer twice on one pair is an error.
"margin" is checked to be a number; the schema has no column for it (exports derive margins from rank gaps), so
it is not stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.errors import InputError
from store.formats.common import ImportedBatch, PairsBuilder, chat_messages, optional_str, read_rows
from store.reading import require

FORMAT = "trl"


def looks_like(rec: dict[str, Any]) -> bool:
    return "chosen" in rec and "rejected" in rec


def read(path: str | Path, source: str | None = None) -> ImportedBatch:
    return read_rows(path, FORMAT, lambda b, line, rec: _row(b, b.path, line, rec, source))


def _assistant_text(messages: list[dict[str, str]], path: Path, line: int, name: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise InputError.one(path, line, name, f"expected one assistant message, got roles {roles}")
    return messages[0]["content"]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    if 0 < i < n and a[i - 1] == " ":
        i -= 1  # the space before the answers stays with them
    return i


def split_implicit(chosen: Any, rejected: Any, path: Path, line: int) -> tuple[Any, str, str]:
    """(prompt, chosen text, rejected text) from full chosen and rejected texts or conversations."""
    if isinstance(chosen, str):
        i = _common_prefix(chosen, rejected)
        if i == 0:
            raise InputError.one(path, line, "chosen", "no prompt given and chosen and rejected share no beginning")
        return chosen[:i], chosen[i:], rejected[i:]
    c = chat_messages(chosen, path, line, "chosen")
    r = chat_messages(rejected, path, line, "rejected")
    i = 0
    while i < min(len(c), len(r)) and c[i] == r[i]:
        i += 1
    if i == 0:
        raise InputError.one(path, line, "chosen", "no prompt given and chosen and rejected share no first message")
    return c[:i], _assistant_text(c[i:], path, line, "chosen"), _assistant_text(r[i:], path, line, "rejected")


def _row(b: PairsBuilder, path: Path, line: int, rec: dict[str, Any], source: str | None) -> None:
    chosen = require(rec, "chosen", (str, list), path, line)
    rejected = require(rec, "rejected", (str, list), path, line)
    if isinstance(chosen, str) != isinstance(rejected, str):
        want = "str" if isinstance(chosen, str) else "list"
        raise InputError.one(path, line, "rejected", f"expected {want} like 'chosen', got {type(rejected).__name__}")
    prompt = rec.get("prompt")
    if prompt is not None and not isinstance(prompt, str | list):
        raise InputError.one(path, line, "prompt", f"expected str or list of messages, got {type(prompt).__name__}")
    margin = rec.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
        raise InputError.one(path, line, "margin", f"expected a number, got {type(margin).__name__}")
    src = source or optional_str(rec, "source", path, line) or FORMAT
    reviewer = optional_str(rec, "reviewer", path, line) or src

    if prompt is None or isinstance(prompt, str) != isinstance(chosen, str):
        prompt, chosen_text, rejected_text = split_implicit(chosen, rejected, path, line)
    elif isinstance(prompt, str):
        chosen_text, rejected_text = chosen, rejected
    else:
        prompt = chat_messages(prompt, path, line, "prompt")
        chosen_text = _assistant_text(chat_messages(chosen, path, line, "chosen"), path, line, "chosen")
        rejected_text = _assistant_text(chat_messages(rejected, path, line, "rejected"), path, line, "rejected")

    if isinstance(prompt, str):
        if not prompt.strip():
            raise InputError.one(path, line, "prompt", "empty prompt")
        key = b.prompt([{"role": "user", "content": prompt}], prompt, src)
    else:
        key = b.prompt(prompt, None, src)
    comp = b.comparison(key, [chosen_text, rejected_text], src, merge=True)
    b.judgment(line, comp, reviewer, [[0], [1]], where="rejected")
