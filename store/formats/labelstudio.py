"""Label Studio `<Pairwise>` exports (the JSON export: an array of tasks; JSON Lines of tasks work too).

Each task is a comparison of `data.answer1` (left) and `data.answer2` (right) for the plain-text prompt
`data.prompt`. Each annotation is a judgment by reviewer "<source>:<completed_by>" (source: `--source`, else
"labelstudio"): "left" ranks answer1 first, "right" answer2. A cancelled annotation (`was_cancelled`) is a skipped
judgment with no ranking. `lead_time` (seconds) becomes the time spent. Drafts and predictions are not judgments.
A task without annotations still becomes a comparison, ready for reviewers in the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.errors import InputError
from store.formats.common import ImportedBatch, PairsBuilder, read_rows
from store.reading import require

FORMAT = "labelstudio"
CHOICE = {"left": [[0], [1]], "right": [[1], [0]]}


def looks_like(rec: dict[str, Any]) -> bool:
    return isinstance(rec.get("data"), dict) and "annotations" in rec


def read(path: str | Path, source: str | None = None) -> ImportedBatch:
    return read_rows(path, FORMAT, lambda b, line, task: _task(b, b.path, line, task, source or FORMAT))


def _user(value: Any, path: Path, line: int, where: str) -> str:
    if isinstance(value, dict):  # some exports expand the user: {"id", "email", ...}
        value = value.get("email") or value.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise InputError.one(path, line, where, f"expected a user id, got {value!r}")
    return str(value)


def _choice(annotation: dict[str, Any], path: Path, line: int, where: str) -> list[list[int]]:
    result = require(annotation, "result", list, path, line, f"{where}.")
    for k, item in enumerate(result):
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, dict) and "selected" in value:
            selected = value["selected"]
            if selected not in CHOICE:
                raise InputError.one(path, line, f"{where}.result[{k}].value.selected",
                                     f"expected 'left' or 'right', got {selected!r}")
            return CHOICE[selected]
    raise InputError.one(path, line, f"{where}.result",
                         "no pairwise choice (value.selected) in a completed annotation")


def _task(b: PairsBuilder, path: Path, line: int, task: dict[str, Any], src: str) -> None:
    data = require(task, "data", dict, path, line)
    prompt = require(data, "prompt", str, path, line, "data.")
    answers = [require(data, name, str, path, line, "data.") for name in ("answer1", "answer2")]
    annotations = require(task, "annotations", list, path, line)
    if not prompt.strip():
        raise InputError.one(path, line, "data.prompt", "empty prompt")
    task_id = task.get("id")
    external_id = None if task_id is None else str(task_id)
    key = b.prompt([{"role": "user", "content": prompt}], prompt, src, external_id=external_id)
    comp = b.comparison(key, answers, src, external_id=external_id)
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise InputError.one(path, line, where, f"expected an annotation object, got {type(ann).__name__}")
        reviewer = f"{src}:{_user(ann.get('completed_by'), path, line, f'{where}.completed_by')}"
        cancelled = ann.get("was_cancelled", False)
        if not isinstance(cancelled, bool):
            raise InputError.one(path, line, f"{where}.was_cancelled", f"expected bool, got {cancelled!r}")
        lead = ann.get("lead_time")
        ms = round(lead * 1000) if isinstance(lead, int | float) and not isinstance(lead, bool) else None
        if cancelled:
            b.judgment(line, comp, reviewer, None, skipped=True, time_spent_ms=ms, where=where)
        else:
            ranking = _choice(ann, path, line, where)
            b.judgment(line, comp, reviewer, ranking, time_spent_ms=ms, where=f"{where}.result")
