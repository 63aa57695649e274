"""Chatbot Arena battles, in the row shape of FastChat's `clean_battle_data.py`.

Each battle is a comparison of the last assistant turns of `conversation_a` and `conversation_b`; the prompt is the
conversation before them (chat messages, no plain text), which must be the same on both sides. `winner`:
"model_a" or "model_b" ranks that side first, "tie" puts both in one group, "tie (bothbad)" is a tie marked
all_bad. The reviewer is "<source>:<judge>" (source: `--source`, else "arena"); `model_a` and `model_b` become the
responses' model names. A multi-turn battle whose earlier assistant turns differ between the sides compares whole
conversations, which one prompt cannot hold: it is left out and counted as skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.errors import InputError
from store.formats.common import ImportedBatch, PairsBuilder, chat_messages, optional_str, read_rows
from store.reading import require

FORMAT = "arena"
WINNER = {"model_a": ([[0], [1]], False), "model_b": ([[1], [0]], False), "tie": ([[0, 1]], False),
          "tie (bothbad)": ([[0, 1]], True)}


def looks_like(rec: dict[str, Any]) -> bool:
    return {"conversation_a", "conversation_b", "winner"} <= rec.keys()


def read(path: str | Path, source: str | None = None) -> ImportedBatch:
    return read_rows(path, FORMAT, lambda b, line, rec: _battle(b, b.path, line, rec, source or FORMAT))


def _battle(b: PairsBuilder, path: Path, line: int, rec: dict[str, Any], src: str) -> None:
    sides = [chat_messages(require(rec, n, list, path, line), path, line, n) for n in ("conversation_a",
                                                                                      "conversation_b")]
    winner = require(rec, "winner", str, path, line)
    if winner not in WINNER:
        raise InputError.one(path, line, "winner", f"expected one of {', '.join(WINNER)}, got {winner!r}")
    judge = require(rec, "judge", (str, int), path, line)
    models = [optional_str(rec, n, path, line) for n in ("model_a", "model_b")]
    for name, conv in zip(("conversation_a", "conversation_b"), sides, strict=True):
        if conv[-1]["role"] != "assistant":
            raise InputError.one(path, line, f"{name}[{len(conv) - 1}].role", "the last turn must be the assistant's")
        if len(conv) < 2:
            raise InputError.one(path, line, name, "no prompt before the assistant's turn")
    history_a, history_b = sides[0][:-1], sides[1][:-1]
    if history_a != history_b:
        if [m for m in history_a if m["role"] != "assistant"] != [m for m in history_b if m["role"] != "assistant"]:
            raise InputError.one(path, line, "conversation_b", "the user turns differ from conversation_a's")
        b.skip("multi-turn battles whose earlier assistant turns differ")
        return
    qid = rec.get("question_id")
    external_id = None if qid is None else str(qid)
    key = b.prompt(history_a, None, src, external_id=external_id)
    comp = b.comparison(key, [sides[0][-1]["content"], sides[1][-1]["content"]], src, models, external_id)
    ranking, all_bad = WINNER[winner]
    b.judgment(line, comp, f"{src}:{judge}", ranking, all_bad=all_bad, where="winner")
