"""Reading prompt files: JSON Lines, CSV (or TSV), Parquet and plain text, each checked whole before any write.

- JSONL: `{"prompt": str | messages}` or `{"messages": [...]}`, optional "source", "split", "tags" (a list, or a
  string separated by ";") and "id".
- CSV / Parquet: a column "prompt" or "text"; optional columns source, split, tags (separated by ";"), id.
- .txt: one prompt per line; blank lines are skipped.

A plain prompt becomes one user message and keeps its text; a messages list has no text. `source` and `split`
given by the caller override the file's; otherwise source is the file's name and split "train". The same prompt
twice in one file is an error naming both lines (a prompt already in the workspace is only counted, on write).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store.batch import Batch, Prompt, prompt_hash
from store.errors import InputError, Problem
from store.formats.common import chat_messages, file_kind, parquet_records
from store.reading import jsonl_records, text_lines

Row = tuple[int, dict[str, Any]]


def _csv_records(path: Path) -> Iterator[Row]:
    """(line where the row starts, {column: value}) of a CSV/TSV file with a header; quoted newlines allowed."""
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    state = {"line": 0}

    def lines() -> Iterator[str]:
        for lineno, text in text_lines(path):
            state["line"] = lineno
            yield text + "\n"

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            line, start = start, state["line"] + 1
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                if "prompt" not in header and "text" not in header:
                    raise InputError.one(path, line, "prompt", f"missing column: need 'prompt' or 'text' "
                                         f"(columns: {', '.join(header)})")
                continue
            if len(row) != len(header):
                raise InputError.one(path, line, None, f"expected {len(header)} fields, got {len(row)}")
            yield line, {k: (v if v != "" else None) for k, v in zip(header, row, strict=True)}
    except csv.Error as e:
        raise InputError.one(path, state["line"], None, f"broken CSV: {e}") from e
    if header is None:
        raise InputError.one(path, None, None, "empty file: no records")


def _txt_records(path: Path) -> Iterator[Row]:
    seen = False
    for lineno, text in text_lines(path):
        if text.strip():
            seen = True
            yield lineno, {"prompt": text}
    if not seen:
        raise InputError.one(path, None, None, "empty file: no records")


def prompt_records(path: str | Path) -> Iterator[Row]:
    """(line, record) of each prompt in `path`, chosen by its extension (.jsonl is the default)."""
    path = Path(path)
    kind = file_kind(path)
    if kind == "csv":
        return _csv_records(path)
    if kind == "parquet":
        return parquet_records(path)
    if kind == "txt":
        return _txt_records(path)
    return jsonl_records(path)


def _str(rec: dict[str, Any], name: str, path: Path, line: int) -> str | None:
    value = rec.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InputError.one(path, line, name, f"expected a non-empty string, got {value!r}")
    return value


def _tags(value: Any, path: Path, line: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(";") if t.strip()]
    if isinstance(value, list | tuple) and all(isinstance(t, str) and t.strip() for t in value):
        return [t.strip() for t in value]
    raise InputError.one(path, line, "tags", f"expected a list of strings or 'a;b', got {value!r}")


def prompt_of(rec: dict[str, Any], path: Path, line: int) -> tuple[list[dict[str, str]], str | None]:
    """(messages, text) of one record: a plain prompt keeps its text, a messages list has none."""
    name = next((n for n in ("prompt", "text", "messages") if rec.get(n) is not None), None)
    if name is None:
        raise InputError.one(path, line, "prompt", "missing (need 'prompt', 'text' or 'messages')")
    value = rec[name]
    if isinstance(value, str):
        if name == "messages":
            raise InputError.one(path, line, name, "expected a list of messages, got str")
        if not value.strip():
            raise InputError.one(path, line, name, "empty prompt")
        return [{"role": "user", "content": value}], value
    if isinstance(value, list):
        return chat_messages(value, path, line, name), None
    raise InputError.one(path, line, name, f"expected str or a list of messages, got {type(value).__name__}")


def read_prompts(path: str | Path, source: str | None = None, split: str | None = None) -> Batch:
    """Every prompt of `path`, checked; all problems raised together, nothing partial."""
    path = Path(path)
    for name, value in (("source", source), ("split", split)):
        if value is not None and not value.strip():
            raise InputError.one(path, None, name, f"empty {name} name")
    batch = Batch()
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for line, rec in prompt_records(path):
        try:
            messages, text = prompt_of(rec, path, line)
            src = source or _str(rec, "source", path, line) or path.name
            sp = split or _str(rec, "split", path, line) or "train"
            tags = _tags(rec.get("tags"), path, line)
            rid = rec.get("id")
            if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
                raise InputError.one(path, line, "id", f"expected str or int, got {type(rid).__name__}")
        except InputError as e:
            problems.extend(e.problems)
            continue
        h = prompt_hash(messages, text)
        if h in first_line:
            problems.append(Problem(str(path), line, None, f"duplicate row: the same prompt as line {first_line[h]} "
                                    f"(lines {first_line[h]} and {line})"))
            continue
        first_line[h] = line
        batch.prompts.append(Prompt(h, messages, text, source=src, split=sp, tags=tags,
                                    external_id=None if rid is None else str(rid)))
    if problems:
        raise InputError(problems)
    return batch
