"""Argilla ranking datasets, in the flattened row shape of Argilla 2.x `records.to_datasets()` / `to_hub()`.

A record has a plain-text "prompt" field, the ranked fields (the options of a ranking question, e.g.
"response-1", "response-2", ...) and, per question `q`, `q.responses` / `q.responses.users` /
`q.responses.status`. Each record is one comparison of its option fields. Each `submitted` ranking response is a
judgment by reviewer "<source>:<user>" (source: `--source`, else "argilla"); a `discarded` one is a skipped
judgment; drafts are not judgments (counted as skipped). A ranking value is a list of option names, best first
(2.x: no ties), or a list of {"value", "rank"} (1.x: equal ranks tie). The same user's submitted answer to a
correction question ("correction", "edited_response", "rewrite") becomes the judgment's edited text.
Suggestions (a model's ranking) are not judgments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from store.errors import InputError
from store.formats.common import ImportedBatch, PairsBuilder
from store.reading import require

FORMAT = "argilla"
CORRECTION_QUESTIONS = ("correction", "edited_response", "rewrite")
_OPTION = re.compile(r"^response[-_ ]?\d+$")
_RESPONSES = ".responses"


def looks_like(rec: dict[str, Any]) -> bool:
    return any(k.endswith(_RESPONSES) for k in rec) and "prompt" in rec


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _ranking_names(value: Any) -> list[str] | None:
    """Option names named by a ranking value, or None when it is not one."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, dict) and isinstance(v.get("value"), str) for v in value):
        return [v["value"] for v in value]
    return None


def _questions(rows: list[tuple[int, dict[str, Any]]], path: Path) -> tuple[str, list[str], str | None]:
    """(ranking question, its option names in natural order, correction question or None) for the whole file."""
    ranking: dict[str, set[str]] = {}
    text_questions: set[str] = set()
    for _, rec in rows:
        for k, v in rec.items():
            if k.endswith(_RESPONSES) and isinstance(v, list):
                q = k[: -len(_RESPONSES)]
                for answer in v:
                    names = _ranking_names(answer)
                    if names is not None:
                        ranking.setdefault(q, set()).update(names)
                    elif isinstance(answer, str):
                        text_questions.add(q)
            elif k.endswith(".suggestion") and _ranking_names(v) is not None:
                ranking.setdefault(k[: -len(".suggestion")], set()).update(_ranking_names(v))
    if len(ranking) != 1:
        found = f"found {sorted(ranking)}" if ranking else "found none"
        raise InputError.one(path, None, None, f"expected one ranking question (`<name>.responses` holding lists "
                             f"of option names), {found}")
    (q, options), = ranking.items()
    correction = next((c for c in CORRECTION_QUESTIONS if c in text_questions), None)
    return q, sorted(options, key=_natural), correction


def read(path: str | Path, source: str | None = None) -> ImportedBatch:
    path = Path(path)
    b = PairsBuilder(path, FORMAT)
    src = source or FORMAT
    rows = list(b.records())
    question, options, correction = _questions(rows, path)
    for line, rec in rows:
        with b.row():
            _record(b, path, line, rec, src, question, options, correction)
    return b.finish()


def _answers(rec: dict[str, Any], q: str, path: Path, line: int) -> list[tuple[Any, str, str]]:
    """(value, user, status) of each response to question `q`."""
    values = rec.get(q + _RESPONSES) or []
    users = rec.get(q + _RESPONSES + ".users") or []
    status = rec.get(q + _RESPONSES + ".status") or []
    for name, v in ((q + _RESPONSES, values), (q + _RESPONSES + ".users", users),
                    (q + _RESPONSES + ".status", status)):
        if not isinstance(v, list):
            raise InputError.one(path, line, name, f"expected a list, got {type(v).__name__}")
        if len(v) != len(values):
            raise InputError.one(path, line, name, f"{len(v)} entries for {len(values)} responses")
    for i, (u, s) in enumerate(zip(users, status, strict=True)):
        if not isinstance(u, str) or not u:
            raise InputError.one(path, line, f"{q}{_RESPONSES}.users[{i}]", f"expected a user id, got {u!r}")
        if s not in ("submitted", "draft", "discarded"):
            raise InputError.one(path, line, f"{q}{_RESPONSES}.status[{i}]",
                                 f"expected submitted, draft or discarded, got {s!r}")
    return list(zip(values, users, status, strict=True))


def _groups(value: Any, fields: list[str], path: Path, line: int, where: str) -> list[list[int]]:
    names = _ranking_names(value)
    if names is None or sorted(names) != sorted(fields):
        raise InputError.one(path, line, where, f"expected a ranking naming each of {fields} once, got {value!r}")
    if all(isinstance(v, str) for v in value):
        return [[fields.index(n)] for n in names]
    ranks = [v.get("rank") for v in value]
    if any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
        raise InputError.one(path, line, where, f"expected an integer rank for each option, got {ranks}")
    return [[fields.index(v["value"]) for v in value if v["rank"] == r] for r in sorted(set(ranks))]


def _record(b: PairsBuilder, path: Path, line: int, rec: dict[str, Any], src: str, q: str, options: list[str],
            correction: str | None) -> None:
    prompt = require(rec, "prompt", str, path, line)
    if not prompt.strip():
        raise InputError.one(path, line, "prompt", "empty prompt")
    fields = [o for o in options if o in rec]
    if len(fields) < 2:
        raise InputError.one(path, line, options[0] if options else None,
                             f"expected at least two ranked fields of {options}, found {fields}")
    texts = [require(rec, f, str, path, line) for f in fields]
    rid = rec.get("id", rec.get("_server_id"))
    external_id = None if rid is None else str(rid)
    key = b.prompt([{"role": "user", "content": prompt}], prompt, src, external_id=external_id)
    comp = b.comparison(key, texts, src, external_id=external_id)
    edits = {}
    if correction:
        edits = {u: v for v, u, s in _answers(rec, correction, path, line) if s == "submitted" and isinstance(v, str)}
    for i, (value, user, status) in enumerate(_answers(rec, q, path, line)):
        reviewer = f"{src}:{user}"
        if status == "draft":
            b.skip("draft responses (not submitted)")
        elif status == "discarded":
            b.judgment(line, comp, reviewer, None, skipped=True, where=f"{q}{_RESPONSES}[{i}]")
        else:
            ranking = _groups(value, fields, path, line, f"{q}{_RESPONSES}[{i}]")
            b.judgment(line, comp, reviewer, ranking, edited_text=edits.get(user), where=f"{q}{_RESPONSES}[{i}]")
