"""Ranked-pair formats: read a file into a `Batch` of prompts, responses, comparisons and judgments.

Each format is a module with `looks_like(record) -> bool` and `read(path, source) -> ImportedBatch`. Files are
JSON Lines (gzip allowed), a JSON array (.json) or Parquet (where a "line" in an error is the row number).
"""

from __future__ import annotations

from pathlib import Path

from store.errors import InputError
from store.formats import arena, argilla, hh, labelstudio, oasst, trl
from store.formats.common import ImportedBatch, records

_MODULES = {m.FORMAT: m for m in (trl, hh, oasst, labelstudio, argilla, arena)}
FORMATS: tuple[str, ...] = tuple(_MODULES)


def _unknown(fmt: str, path: Path) -> InputError:
    return InputError.one(path, None, None, f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def detect_format(path: str | Path) -> str:
    """The format of `path`, judged from its first record; an error naming the file when none or several fit."""
    path = Path(path)
    it = records(path)
    try:
        line, first = next(it)
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    fits = [name for name, m in _MODULES.items() if m.looks_like(first)]
    if "hh" in fits:
        fits.remove("trl")  # an HH transcript is also a valid TRL row; the HH reader keeps its turns
    if len(fits) == 1:
        return fits[0]
    how = f"it could be any of {', '.join(fits)}" if fits else "its first record matches none of the known shapes"
    raise InputError.one(path, line, None, f"cannot tell the format ({how}); name one with --format: "
                         f"{', '.join(FORMATS)}")


def read_pairs(path: str | Path, fmt: str, source: str | None = None) -> ImportedBatch:
    """Read `path` as format `fmt`: the whole file is checked, and every problem raised together."""
    path = Path(path)
    if fmt not in _MODULES:
        raise _unknown(fmt, path)
    if source is not None and not source.strip():
        raise InputError.one(path, None, "source", "empty source name")
    return _MODULES[fmt].read(path, source)


__all__ = ["FORMATS", "ImportedBatch", "detect_format", "read_pairs"]
