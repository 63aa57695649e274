"""Exporting judgments as training rows for TRL: preference pairs, KTO labels and SFT targets, with a manifest.

Row shapes (TRL's dataset formats), built by `store.rows.trl_row` (the trainers build theirs with it too):
- pairs: {"prompt", "chosen", "rejected"[, "margin"]}; kto: {"prompt", "completion", "label"};
  sft: {"prompt", "completion"} or {"messages"} (conversational) or {"text"} (implicit).
- style "standard": `prompt` is a string (the prompt's original text when it had one, else its messages as an
  HH transcript "\\n\\nHuman: ...\\n\\nAssistant:"); responses are their stored text, verbatim.
  "conversational": `prompt` is the message list, a response is [{"role": "assistant", "content": ...}].
  "implicit": no `prompt`: chosen/rejected are prompt + response as one string; "implicit-conversational": as the
  full message lists.
- `with_meta` adds where a row came from: reviewer, comparison_id, judgment_id and round (per reviewer; the TRL
  importer reads `reviewer` back), or comparison_id, round, agreement, n_reviewers and reviewers (aggregated);
  pairs and kto rows also `origin` ("ranking" or "edit" for pairs, "response" or "edit" for kto: an edited answer
  ranked first, `PairFilter.edited_first`; not `source`, which the TRL importer reads as the data's source), sft
  rows `source`.

The file is written to a temporary name beside `out` and renamed, so a failure leaves no half file; the manifest
(`<out>.manifest.json`) records the kind, style, filters, counts (rows, and what was left out and why), the schema
version, the rankloop version, the data file's sha256 and the time. With `exclude_flagged`, `filters` names the
reviewers left out (`excluded_reviewers`: name -> gold accuracy) and `counts.left_out` their judgments.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from store.labels import SFT_SOURCES, SftSource, kto_records, sft_records
from store.pairs import PairFilter, aggregated_records, per_reviewer_records, read_scoped
from store.rows import trl_row

KINDS = ("pairs", "kto", "sft")
STYLES = ("standard", "conversational", "implicit", "implicit-conversational")
SUFFIXES = (".jsonl", ".parquet")
_ALWAYS_COUNTED = {"pairs": ("skipped_judgments", "all_bad_judgments", "tied_pairs"),
                   "kto": ("skipped_judgments",), "sft": ("skipped_judgments",)}


def _meta(record: dict[str, Any], aggregate: bool) -> dict[str, Any]:
    if aggregate:
        keys = ("comparison_id", "round", "agreement", "n_reviewers", "reviewers")
    else:
        keys = ("reviewer", "comparison_id", "judgment_id", "round")
    return {k: record[k] for k in keys}


def _rows(kind: str, records: list[dict[str, Any]], style: str, aggregate: bool, with_meta: bool,
          with_margin: bool) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = trl_row(kind, r, style)
        if with_margin:
            row["margin"] = float(r["margin"])
        if with_meta:
            row.update(_meta(r, aggregate))
            if kind == "sft":
                row["source"] = r["source"]
            else:
                row["origin"] = r["source"]
        rows.append(row)
    return rows


def check_output_path(out: str | Path, overwrite: bool = False) -> Path:
    """The output path, checked: a known suffix, an existing parent folder, no file replaced unless asked."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"{out}: unknown output format {out.suffix or '(no suffix)'!r}; use .jsonl or .parquet")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise ValueError(f"{out}: is a folder, expected a file name")
    manifest = manifest_path(out)
    for path in (out, manifest):
        if path.exists() and not overwrite:
            raise ValueError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    return out


def manifest_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def _write_data(rows: list[dict[str, Any]], path: Path, suffix: str) -> None:
    if suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({}), path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_beside(out: Path, suffix: str) -> Path:
    """A fresh name in the same folder (so the rename is atomic), created with the usual permissions."""
    return out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{suffix}.tmp"


def _rankloop_version() -> str:
    try:
        return version("rankloop")
    except PackageNotFoundError:
        return "unknown"


def _used_judgments(records: list[dict[str, Any]]) -> set[int]:
    return {j for r in records for j in (r["judgment_ids"] if "judgment_ids" in r else [r["judgment_id"]])}


def _counts(kind: str, records: list[dict[str, Any]], left: Counter) -> dict[str, Any]:
    reviewers = {n for r in records for n in (r["reviewers"] if "reviewers" in r else [r["reviewer"]])}
    left_out = {k: 0 for k in _ALWAYS_COUNTED[kind]} | {k: v for k, v in left.items() if v}
    return {"rows": len(records), "comparisons": len({r["comparison_id"] for r in records}),
            "judgments": len(_used_judgments(records)), "reviewers": len(reviewers),
            "by_source": dict(sorted(Counter(r["source"] for r in records).items())),
            "left_out": dict(sorted(left_out.items()))}


def _snapshot(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Which judgments made the rows: enough to tell later whether the same export would still come out."""
    ids = sorted(_used_judgments(records))
    return {"max_judgment_id": ids[-1] if ids else None,
            "judgment_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}


def export(db: str | Path, kind: str, out: str | Path, *, filters: PairFilter | None = None,
           style: str = "standard", aggregate: bool = False, with_meta: bool = False, with_margin: bool | None = None,
           sft_source: SftSource = "both", overwrite: bool = False) -> dict[str, Any]:
    """Write `kind` rows (pairs, kto or sft) to `out` (.jsonl or .parquet) and its manifest; return the manifest."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if kind == "kto" and style.startswith("implicit"):
        raise ValueError("KTO rows need an explicit prompt: use style standard or conversational")
    if sft_source not in SFT_SOURCES:
        raise ValueError(f"sft_source must be one of {', '.join(SFT_SOURCES)}, got {sft_source!r}")
    f = filters or PairFilter()
    if kind != "pairs" and f.min_agreement is not None and not aggregate:
        raise ValueError(f"min_agreement applies to pairs, or to {kind} rows aggregated over reviewers (--aggregate)")
    if with_margin and kind != "pairs":
        raise ValueError("margin applies to pairs only")
    with_margin = kind == "pairs" if with_margin is None else with_margin
    out = check_output_path(out, overwrite)

    fb = read_scoped(db, f)
    if kind == "pairs":
        records, left = aggregated_records(fb, f) if aggregate else per_reviewer_records(fb, f)
    elif kind == "kto":
        records, left = kto_records(fb, f, aggregate)
    else:
        records, left = sft_records(fb, f, aggregate, sft_source)
    rows = _rows(kind, records, style, aggregate, with_meta, with_margin)

    manifest: dict[str, Any] = {
        "kind": kind, "file": out.name, "format": out.suffix[1:], "style": style, "aggregate": aggregate,
        "with_meta": with_meta, "with_margin": with_margin, "filters": f.as_dict(),
        **({"sft_source": sft_source} if kind == "sft" else {}),
        "columns": list(rows[0]) if rows else [], "counts": _counts(kind, records, left),
        "snapshot": _snapshot(records),
        "schema_version": fb.schema_version, "rankloop_version": _rankloop_version(),
    }
    data_tmp = _temp_beside(out, out.suffix)
    manifest_tmp = _temp_beside(out, ".manifest.json")
    try:
        _write_data(rows, data_tmp, out.suffix)
        manifest["sha256"] = file_sha256(data_tmp)
        manifest["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        manifest_tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(data_tmp, out)
        os.replace(manifest_tmp, manifest_path(out))
    finally:
        data_tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)
    return manifest
