"""What every pair format shares: reading records (JSONL, a JSON array or Parquet) and building a located batch.

A format module turns records into calls on a `PairsBuilder`: a prompt, a comparison of its responses, and the
judgments of that comparison. The builder keys every judgment by its content (format, reviewer, prompt, response
texts, ranking, all_bad, skipped), so a row repeated inside a file is an error that names both lines, and the
import can refuse a file whose judgments are already in the workspace. Problems are collected row by row and
raised together; nothing is written while there is one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store.batch import Batch, Comparison, Judgment, Prompt, Response
from store.errors import InputError, Problem
from store.reading import first_nonblank, jsonl_records, text_lines

ROLES = ("system", "user", "assistant")


def file_kind(path: Path) -> str:
    """'jsonl', 'json', 'parquet', 'csv' or 'txt' from the name (a trailing .gz is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    return {".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "txt"}.get(ext, "jsonl")


def json_array_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line where the item starts, object) for each item of a whole-file JSON array (Label Studio's export)."""
    text = "\n".join(t for _, t in text_lines(path))
    decoder = json.JSONDecoder()
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def broken(i: int, msg: str) -> InputError:
        return InputError.one(path, text.count("\n", 0, i) + 1, None, f"broken JSON: {msg}")

    i = skip(0)
    if i == n:
        raise InputError.one(path, None, None, "empty file: no records")
    if text[i] != "[":
        raise broken(i, "expected a JSON array of records")
    i, line, counted_to, seen = skip(i + 1), 1, 0, False
    while i < n and text[i] != "]":
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise InputError.one(path, e.lineno, None, f"broken JSON at column {e.colno}: {e.msg}") from e
        line += text.count("\n", counted_to, i)
        counted_to = i
        if not isinstance(obj, dict):
            raise InputError.one(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
        seen = True
        yield line, obj
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i < n and text[i] != "]":
            raise broken(i, "expected ',' or ']' after an item")
    if i >= n:
        raise broken(n, "the array is not closed (truncated file?)")
    if skip(i + 1) != n:
        raise broken(skip(i + 1), "extra data after the array")
    if not seen:
        raise InputError.one(path, None, None, "empty file: no records")


def parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row) of a Parquet file; the row number stands in for the line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError.one(path, None, None, "file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError.one(path, None, None, f"not a readable Parquet file ({e})") from e
    if table.num_rows == 0:
        raise InputError.one(path, None, None, "empty file: no records")
    yield from enumerate(table.to_pylist(), start=1)


def records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) of each record: JSON Lines (default), a JSON array (.json) or Parquet (row numbers)."""
    path = Path(path)
    kind = file_kind(path)
    if kind in ("csv", "txt"):
        raise InputError.one(path, None, None, f"ranked pairs are read from JSON Lines, JSON or Parquet, not {kind}")
    if kind == "parquet":
        return parquet_records(path)
    if kind == "json" and first_nonblank(path).lstrip().startswith("["):
        return json_array_records(path)
    # Some tools write JSON Lines under a .json name: an object first means one record per line.
    return jsonl_records(path)


def chat_messages(value: Any, path: Path, line: int | None, name: str) -> list[dict[str, str]]:
    """A checked list of {"role", "content"} chat messages (other keys dropped)."""
    if not isinstance(value, list):
        raise InputError.one(path, line, name, f"expected a list of messages, got {type(value).__name__}")
    if not value:
        raise InputError.one(path, line, name, "empty list of messages")
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise InputError.one(path, line, where, f"expected a message object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError.one(path, line, f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InputError.one(path, line, f"{where}.content", f"expected str, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def optional_str(obj: dict[str, Any], name: str, path: Path, line: int | None, prefix: str = "") -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError.one(path, line, f"{prefix}{name}", f"expected str, got {type(value).__name__}")
    return value


@dataclass
class ImportedBatch(Batch):
    """A batch read from a file, with the line of each judgment (by idempotency key) and what was left out."""

    fmt: str = ""
    key_lines: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # reason -> rows left out on purpose


@dataclass
class ComparisonRef:
    key: int
    prompt_key: str
    response_keys: list[int]
    texts: list[str]
    source: str


class PairsBuilder:
    """Collects prompts, responses, comparisons and judgments from one file, with problems located by line."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = Path(path), fmt
        self.batch = ImportedBatch(fmt=fmt)
        self.problems: list[Problem] = []
        self._prompts: set[str] = set()
        self._merged: dict[tuple[str, tuple[str, ...]], ComparisonRef] = {}
        self._judged: dict[tuple[int, str], int] = {}  # (comparison key, reviewer) -> line
        self._next = 0

    def problem(self, line: int | None, name: str | None, message: str) -> None:
        self.problems.append(Problem(str(self.path), line, name, message))

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """The file's records; a reading error (broken JSON, encoding, ...) is raised with the problems so far."""
        try:
            yield from records(self.path)
        except InputError as e:
            raise InputError(self.problems + e.problems) from None

    @contextmanager
    def row(self) -> Iterator[None]:
        """Record a located error raised while reading one record and go on with the next."""
        try:
            yield
        except InputError as e:
            self.problems.extend(e.problems)

    def _key(self) -> int:
        self._next += 1
        return self._next

    def prompt(self, messages: list[dict[str, str]], text: str | None, source: str,
               external_id: str | None = None) -> str:
        """The prompt's key (its content); a prompt seen before in this file is not added twice."""
        # Within one format the messages follow from a prompt's text, when it has one: the text is the identity.
        key = f"t:{text}" if text is not None else "m:" + json.dumps(messages, ensure_ascii=False, sort_keys=True)
        if key not in self._prompts:
            self._prompts.add(key)
            self.batch.prompts.append(Prompt(key, messages, text, source=source, external_id=external_id))
        return key

    def comparison(self, prompt_key: str, texts: list[str], source: str, model_names: list[str | None] | None = None,
                   external_id: str | None = None, merge: bool = False) -> ComparisonRef:
        """A comparison of `texts` for the prompt. With `merge`, rows of the file that rank the same texts for the
        same prompt (one judgment per row, as in TRL or HH files) share one comparison, as if several reviewers
        had ranked it in the app; the returned reference lists the responses in the order of `texts`."""
        ident = (prompt_key, tuple(sorted(texts)))
        if merge and ident in self._merged:
            ref = self._merged[ident]
            free = list(range(len(ref.texts)))
            order = []
            for text in texts:
                pos = next(i for i in free if ref.texts[i] == text)
                free.remove(pos)
                order.append(pos)
            return ComparisonRef(ref.key, prompt_key, [ref.response_keys[i] for i in order], list(texts), ref.source)
        names = model_names or [None] * len(texts)
        keys = [self._key() for _ in texts]
        for k, text, name in zip(keys, texts, names, strict=True):
            self.batch.responses.append(Response(k, prompt_key, text, source=source, model_name=name))
        ref = ComparisonRef(self._key(), prompt_key, keys, list(texts), source)
        self.batch.comparisons.append(Comparison(ref.key, prompt_key, keys, source=source, external_id=external_id))
        if merge:
            self._merged[ident] = ref
        return ref

    def judgment(self, line: int, comp: ComparisonRef, reviewer: str, ranking: list[list[int]] | None, *,
                 all_bad: bool = False, skipped: bool = False, edited_text: str | None = None,
                 time_spent_ms: int | None = None, where: str | None = None) -> None:
        """A judgment of `comp`; `ranking` holds groups of response positions (0-based), best first."""
        if ranking is not None:
            named = sorted(i for g in ranking for i in g)
            if named != list(range(len(comp.texts))) or any(not g for g in ranking):
                self.problem(line, where, f"the ranking must name each of the {len(comp.texts)} responses once")
                return
            group_of = {i: gi for gi, g in enumerate(ranking) for i in g}
            first_of: dict[str, int] = {}
            for i, text in enumerate(comp.texts):
                j = first_of.setdefault(text, i)
                if group_of[i] != group_of[j]:
                    self.problem(line, where, "the preferred and the rejected response are the same text")
                    return
        key = judgment_key(self.fmt, reviewer, comp.prompt_key, comp.texts, ranking, all_bad, skipped)
        first = self.batch.key_lines.get(key)
        if first is not None:
            self.problem(line, None, f"duplicate row: the same judgment as line {first} (lines {first} and {line})")
            return
        earlier = self._judged.setdefault((comp.key, reviewer), line)
        if earlier != line:
            self.problem(line, where, f"reviewer {reviewer!r} already ranked these responses for this prompt "
                         f"differently on line {earlier} (lines {earlier} and {line})")
            return
        self.batch.key_lines[key] = line
        self.batch.judgments.append(Judgment(
            comp.key, reviewer, key,
            ranking=None if ranking is None else [[comp.response_keys[i] for i in g] for g in ranking],
            all_bad=all_bad, skipped=skipped, edited_text=edited_text, time_spent_ms=time_spent_ms,
            source=comp.source,
        ))

    def skip(self, reason: str) -> None:
        self.batch.skipped[reason] += 1

    def finish(self) -> ImportedBatch:
        if self.problems:
            raise InputError(self.problems)
        if not self.batch.comparisons:
            why = f" ({_skipped(self.batch.skipped)})" if self.batch.skipped else ""
            raise InputError.one(self.path, None, None, f"nothing to import: no comparisons found for format "
                                 f"{self.fmt!r}{why}")
        return self.batch


def judgment_key(fmt: str, reviewer: str, prompt_key: str, texts: list[str], ranking: list[list[int]] | None,
                 all_bad: bool, skipped: bool) -> str:
    """Idempotency key of an imported judgment: a hash of its content, independent of the order of the responses."""
    parts = [fmt, reviewer, prompt_key, str(len(texts)), *sorted(texts), str(all_bad), str(skipped)]
    if ranking is None:
        parts.append("no ranking")
    for g in ranking or ():
        parts += [str(len(g)), *sorted(texts[i] for i in g)]
    blob = "".join(f"{len(p)}:{p}" for p in parts)  # length-prefixed: no two contents give the same blob
    return f"import:{fmt}:{hashlib.sha256(blob.encode('utf-8', 'surrogatepass')).hexdigest()}"


def _skipped(skipped: Counter) -> str:
    return ", ".join(f"{n} skipped: {reason}" for reason, n in skipped.items())


def read_rows(path: str | Path, fmt: str,
              handle: Callable[[PairsBuilder, int, dict[str, Any]], None]) -> ImportedBatch:
    """Each record of the file through `handle(builder, line, record)`; a record's located errors are collected and
    reading goes on, so one InputError at the end lists every bad row."""
    b = PairsBuilder(Path(path), fmt)
    for line, rec in b.records():
        with b.row():
            handle(b, line, rec)
    return b.finish()
