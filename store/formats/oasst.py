"""OpenAssistant exports: message trees (`{"message_tree_id", "prompt": {..., "replies": [...]}}` per line) or flat
message rows (`{"message_id", "parent_id", "role", "text", "rank", ...}`, as in the oasst1 dataset files).

One comparison per prompter message with two or more ranked, non-deleted assistant replies. The prompt is the
conversation from the root to that message (prompter -> user, assistant -> assistant; no plain text); the ranking
is the replies in groups by `rank` (0 best, equal ranks tie). Replies without a rank are left out of that
comparison; deleted messages and everything below them are left out. Ranked prompter replies (user turns) are not
model responses and are counted as skipped. The reviewer is the source (`--source`, else "oasst");
`model_name` of a reply is kept as the response's model name.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from store.errors import InputError
from store.formats.common import ImportedBatch, PairsBuilder, optional_str
from store.reading import require

FORMAT = "oasst"
ROLE = {"prompter": "user", "assistant": "assistant"}


def looks_like(rec: dict[str, Any]) -> bool:
    tree = isinstance(rec.get("prompt"), dict) and "replies" in rec["prompt"]
    flat = {"message_id", "parent_id", "role", "text"} <= rec.keys()
    return tree or flat


def read(path: str | Path, source: str | None = None) -> ImportedBatch:
    path = Path(path)
    b = PairsBuilder(path, FORMAT)
    src = source or FORMAT
    flat: list[tuple[int, dict[str, Any]]] = []
    for line, rec in b.records():
        with b.row():
            if "prompt" in rec or ("message_tree_id" in rec and "message_id" not in rec):
                root = require(rec, "prompt", dict, path, line)
                _walk(b, path, line, root, [], "prompt", src)
            else:
                flat.append((line, rec))
    if flat:
        for line, root in _trees(b, path, flat):
            with b.row():
                _walk(b, path, line, root, [], "", src)
    return b.finish()


def _trees(b: PairsBuilder, path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """Nest flat message rows into trees (each node carries its `_line`); roots have no parent_id."""
    by_id: dict[str, dict[str, Any]] = {}
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roots: list[tuple[int, dict[str, Any]]] = []
    for line, rec in rows:
        with b.row():
            mid = require(rec, "message_id", str, path, line)
            if mid in by_id:
                b.problem(line, "message_id", f"duplicate message id {mid!r} (also on line {by_id[mid]['_line']})")
                continue
            node = {**rec, "_line": line, "replies": children[mid]}
            by_id[mid] = node
            parent = optional_str(rec, "parent_id", path, line)
            if parent is None:
                roots.append((line, node))
            else:
                children[parent].append(node)
    for parent in children.keys() - by_id.keys():
        for node in children[parent]:
            b.problem(node["_line"], "parent_id", f"parent message {parent!r} is not in the file")
    return roots


def _message(obj: Any, path: Path, line: int, where: str) -> dict[str, Any]:
    """A checked message: role, text, rank (None when absent), deleted, replies, model_name, message_id."""
    if not isinstance(obj, dict):
        raise InputError.one(path, line, where or None, f"expected a message object, got {type(obj).__name__}")
    if "_line" in obj:  # a flat row: fields are its own, on its own line
        line, prefix = obj["_line"], ""
    else:
        prefix = f"{where}." if where else ""
    role = require(obj, "role", str, path, line, prefix)
    if role not in ROLE:
        raise InputError.one(path, line, f"{prefix}role", f"expected 'prompter' or 'assistant', got {role!r}")
    rank = obj.get("rank")
    if isinstance(rank, float) and rank.is_integer():
        rank = int(rank)  # Parquet exports store rank as a nullable double
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise InputError.one(path, line, f"{prefix}rank", f"expected an integer >= 0, got {rank!r}")
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        raise InputError.one(path, line, f"{prefix}deleted", f"expected bool, got {type(deleted).__name__}")
    replies = obj.get("replies") or []
    if not isinstance(replies, list):
        raise InputError.one(path, line, f"{prefix}replies", f"expected a list, got {type(replies).__name__}")
    return {
        "role": role, "text": require(obj, "text", str, path, line, prefix), "rank": rank, "deleted": deleted,
        "replies": replies, "line": line, "model_name": optional_str(obj, "model_name", path, line, prefix),
        "message_id": optional_str(obj, "message_id", path, line, prefix),
    }


def _walk(b: PairsBuilder, path: Path, line: int, obj: Any, history: list[dict[str, str]], where: str,
          src: str) -> None:
    msg = _message(obj, path, line, where)
    if msg["deleted"]:
        return
    conversation = [*history, {"role": ROLE[msg["role"]], "content": msg["text"]}]
    replies = [(_message(r, path, line, f"{where}.replies[{i}]" if where else f"replies[{i}]"), r, i)
               for i, r in enumerate(msg["replies"])]
    ranked = [(m, i) for m, _, i in replies if m["rank"] is not None and not m["deleted"]]
    if len(ranked) >= 2 and msg["role"] == "assistant":
        b.skip("ranked prompter replies (user turns are not model responses)")
    elif len(ranked) >= 2:
        ranks = sorted({m["rank"] for m, _ in ranked})
        texts = [m["text"] for m, _ in ranked]
        key = b.prompt(conversation, None, src, external_id=msg["message_id"])
        comp = b.comparison(key, texts, src, [m["model_name"] for m, _ in ranked], external_id=msg["message_id"])
        ranking = [[k for k, (m, _) in enumerate(ranked) if m["rank"] == r] for r in ranks]
        b.judgment(msg["line"], comp, src, ranking, where=f"{where}.replies" if where else "replies")
    for m, raw, i in replies:
        if not m["deleted"]:
            _walk(b, path, m["line"], raw, conversation, f"{where}.replies[{i}]" if where else f"replies[{i}]", src)
