"""Anthropic HH-RLHF rows: normalized `{"prompt", "chosen", "rejected"}` or raw `{"chosen", "rejected"}` dialogues.

- Normalized: the prompt is the transcript "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:" and chosen and
  rejected are the final replies (leading space included).
- Raw: chosen and rejected are whole dialogues; each is split after its last "\\n\\nAssistant:", and the two parts
  before it must be the same conversation.

The transcript becomes chat messages (user/assistant, each turn stripped of the space after the colon), and the
prompt string itself is kept as `Prompt.text`, so `text + chosen` reproduces the original byte for byte. Replies
are stored verbatim. Source: `--source`, else the row's "source", else "hh"; the reviewer is the source. Each row
is one comparison [chosen, rejected] with one judgment (rows with the same prompt and texts share a comparison).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from store.errors import InputError
from store.formats.common import ImportedBatch, PairsBuilder, optional_str, read_rows
from store.reading import require

FORMAT = "hh"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def is_transcript(text: Any) -> bool:
    return isinstance(text, str) and text.startswith(HUMAN) and ASSISTANT in text


def looks_like(rec: dict[str, Any]) -> bool:
    """An HH row: chosen and rejected, and either an HH prompt or HH dialogues in chosen."""
    if "chosen" not in rec or "rejected" not in rec:
        return False
    prompt = rec.get("prompt")
    if prompt is not None:
        return is_transcript(prompt) and prompt.endswith(ASSISTANT)
    return is_transcript(rec["chosen"])


def transcript_messages(prompt: str, path: Path, line: int, name: str = "prompt") -> list[dict[str, str]]:
    """Chat messages of an HH prompt transcript, without the empty final "Assistant:" slot."""
    if not is_transcript(prompt) or not prompt.endswith(ASSISTANT):
        raise InputError.one(path, line, name, "expected an HH transcript: '\\n\\nHuman: ...' ending with "
                             "'\\n\\nAssistant:'")
    parts = _TURN.split(prompt)  # ['', 'Human', ' text', 'Assistant', ' text', ..., 'Assistant', '']
    return [
        {"role": "user" if who == "Human" else "assistant", "content": content.strip()}
        for who, content in zip(parts[1:-2:2], parts[2:-2:2], strict=True)
    ]


def split_dialogue(chosen: str, rejected: str, path: Path, line: int) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of raw HH full dialogues."""
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not is_transcript(text):
            raise InputError.one(path, line, name, "expected an HH dialogue starting with '\\n\\nHuman:' and "
                                 "holding an '\\n\\nAssistant:' turn")
    i, j = chosen.rfind(ASSISTANT) + len(ASSISTANT), rejected.rfind(ASSISTANT) + len(ASSISTANT)
    if chosen[:i] != rejected[:j]:
        raise InputError.one(path, line, "rejected", "chosen and rejected differ before their last "
                             "'\\n\\nAssistant:' turn (not the same conversation)")
    return chosen[:i], chosen[i:], rejected[j:]


def read(path: str | Path, source: str | None = None) -> ImportedBatch:
    return read_rows(path, FORMAT, lambda b, line, rec: _row(b, b.path, line, rec, source))


def _row(b: PairsBuilder, path: Path, line: int, rec: dict[str, Any], source: str | None) -> None:
    chosen = require(rec, "chosen", str, path, line)
    rejected = require(rec, "rejected", str, path, line)
    src = source or optional_str(rec, "source", path, line) or FORMAT
    if "prompt" in rec:
        prompt = require(rec, "prompt", str, path, line)
    else:
        prompt, chosen, rejected = split_dialogue(chosen, rejected, path, line)
    key = b.prompt(transcript_messages(prompt, path, line), prompt, src)
    comp = b.comparison(key, [chosen, rejected], src, merge=True)
    b.judgment(line, comp, src, [[0], [1]], where="rejected")
