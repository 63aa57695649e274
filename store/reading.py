"""Reading input files strictly: UTF-8, no NUL bytes, bounded line length, gzip allowed, every problem located."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store.errors import InputError

MAX_LINE_BYTES = 16 * 1024 * 1024  # one record; a longer line is almost surely a broken file


def _open_bytes(path: Path):
    if not path.exists():
        raise InputError.one(path, None, None, "file not found")
    if path.is_dir():
        raise InputError.one(path, None, None, "is a folder, expected a file")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _decode(path: Path, lineno: int, raw: bytes) -> str:
    if b"\x00" in raw:
        column = raw.index(b"\x00") + 1
        raise InputError.one(path, lineno, None, f"NUL byte at column {column}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start : e.start + 1]
        raise InputError.one(path, lineno, None, f"not valid UTF-8 (byte {e.start + 1}: {bad!r})") from e


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) for each line; skips nothing."""
    path = Path(path)
    try:
        with _open_bytes(path) as f:
            lineno = 0
            while True:
                raw = f.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                lineno += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise InputError.one(path, lineno, None, f"line longer than {MAX_LINE_BYTES} bytes")
                text = _decode(path, lineno, raw.rstrip(b"\r\n"))
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield lineno, text
    except (gzip.BadGzipFile, EOFError) as e:
        raise InputError.one(path, None, None, f"broken gzip file ({e})") from e


def jsonl_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file; errors name the line."""
    path = Path(path)
    seen_any = False
    for lineno, text in text_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError.one(path, lineno, None, f"broken JSON at column {e.colno}: {e.msg}") from e
        if not isinstance(obj, dict):
            raise InputError.one(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
        seen_any = True
        yield lineno, obj
    if not seen_any:
        raise InputError.one(path, None, None, "empty file: no records")


def json_document(path: str | Path) -> Any:
    """A whole-file JSON document (e.g. a Label Studio export)."""
    path = Path(path)
    text = "\n".join(t for _, t in text_lines(path))
    if not text.strip():
        raise InputError.one(path, None, None, "empty file: no records")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError.one(path, e.lineno, None, f"broken JSON at column {e.colno}: {e.msg}") from e


def first_nonblank(path: str | Path) -> str:
    for _, text in text_lines(path):
        if text.strip():
            return text
    raise InputError.one(path, None, None, "empty file: no records")


def require(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path | str, line: int | None,
            prefix: str = "") -> Any:
    """obj[name], checked present and of `kind`; a located error otherwise."""
    field = f"{prefix}{name}"
    if name not in obj or obj[name] is None:
        raise InputError.one(path, line, field, "missing")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError.one(path, line, field, f"expected {want}, got {type(value).__name__}")
    return value
