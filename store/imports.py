"""Importing files into the workspace, all or nothing: the whole file is read and checked first, then written in
one transaction through `write_batch` (bulk loads through pandas).

- `import_prompts`: prompts only (JSONL, CSV, Parquet, .txt). Prompts already in the workspace are reused and
  counted, so importing a file twice adds nothing and is not an error.
- `import_pairs`: ranked pairs in one of `store.formats.FORMATS` (detected when not given). Judgments carry
  content-based idempotency keys, so a file (or any row of it) already imported is an error naming its line.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from store.batch import BatchResult, write_batch
from store.db import write
from store.errors import InputError, Problem
from store.formats import FORMATS, ImportedBatch, detect_format, read_pairs
from store.formats.common import records
from store.prompts_import import prompt_records, read_prompts


@contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic garbage collection while a file becomes millions of small objects (none of them in cycles):
    without this, repeated full collections take about half the time of a large import."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _bad_unicode(path: str | Path, rows: Iterable[tuple[int, Any]]) -> InputError:
    """The record holding a lone surrogate (JSON's "\\ud800" escapes decode to one; UTF-8 cannot store it).
    Looked for only after a write failed on it, so the common case pays nothing."""
    for line, rec in rows:
        try:
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return InputError.one(path, line, None, "text that is not valid Unicode (an escaped lone surrogate "
                                  "such as \\ud800)")
    return InputError.one(path, None, None, "text that is not valid Unicode (an escaped lone surrogate)")


def import_prompts(db: str | Path, path: str | Path, source: str | None = None,
                   split: str | None = None) -> dict[str, Any]:
    """Add the prompts of `path`; returns counts: read, added, already present."""
    try:
        with _bulk():
            batch = read_prompts(path, source=source, split=split)
            result: BatchResult = write(db, lambda con: write_batch(con, batch))
    except UnicodeEncodeError as e:
        raise _bad_unicode(path, prompt_records(path)) from e
    return {
        "file": str(path),
        "prompts_read": len(batch.prompts),
        "prompts_added": result.prompts_new,
        "prompts_already_present": result.prompts_reused,
    }


def imported_keys(con: duckdb.DuckDBPyConnection, keys: list[str]) -> set[str]:
    """Which of `keys` are judgment idempotency keys in the workspace already (inside the caller's transaction)."""
    if not keys:
        return set()
    con.register("_import_keys", pd.DataFrame({"k": keys}))
    try:
        rows = con.execute(
            "SELECT j.idempotency_key FROM judgments j JOIN _import_keys i ON j.idempotency_key = i.k"
        ).fetchall()
    finally:
        con.unregister("_import_keys")
    return {r[0] for r in rows}


def _lines(lines: list[int], shown: int = 5) -> str:
    more = f", ... ({len(lines) - shown} more)" if len(lines) > shown else ""
    return ", ".join(map(str, lines[:shown])) + more


def _write_new(batch: ImportedBatch, path: Path) -> Any:
    def work(con: duckdb.DuckDBPyConnection) -> BatchResult:
        found = imported_keys(con, list(batch.key_lines))
        if found:
            lines = sorted({batch.key_lines[k] for k in found})
            total = len(batch.key_lines)
            what = (f"all {total} judgments of this file are" if len(found) == total
                    else f"{len(found)} of the {total} judgments of this file are")
            raise InputError([Problem(str(path), lines[0], None, f"already imported: {what} in the workspace "
                                      f"(lines {_lines(lines)})")])
        return write_batch(con, batch)

    return work


def import_pairs(db: str | Path, path: str | Path, fmt: str | None = None,
                 source: str | None = None) -> dict[str, Any]:
    """Add the comparisons and judgments of `path` (format `fmt`, or detected); returns counts of what was added."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise InputError.one(path, None, "format", f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    fmt = fmt or detect_format(path)
    try:
        with _bulk():
            batch = read_pairs(path, fmt, source)
            result: BatchResult = write(db, _write_new(batch, path))
    except UnicodeEncodeError as e:
        raise _bad_unicode(path, records(path)) from e
    return {
        "file": str(path),
        "format": fmt,
        "prompts_added": result.prompts_new,
        "prompts_reused": result.prompts_reused,
        "responses": result.responses,
        "comparisons": result.comparisons,
        "judgments": result.judgments,
        "reviewers_added": result.reviewers_new,
        "skipped": dict(batch.skipped),
    }
