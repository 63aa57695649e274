"""A per-reviewer pairs export loses nothing: importing it (TRL format, `reviewer` column) gives the same pairs."""

import json
from collections import Counter

import pytest

from rankloop.workspace import init_workspace
from store.export import export
from store.pairs import preference_pairs
from store.rows import prompt_string
from tests.preferences import Seed

pytestmark = pytest.mark.both_backends

imports = pytest.importorskip("store.imports", reason="the TRL importer (store/imports.py) is not there yet")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye?"}]


def _pairs(db, style):
    """The multiset of (reviewer, prompt, chosen, rejected) as that style shows the prompt."""
    frame = preference_pairs(db)
    out = Counter()
    for r in frame.to_dict("records"):
        prompt = prompt_string(r["prompt_text"], r["prompt_messages"]) if style == "standard" else \
            json.dumps(r["prompt_messages"], sort_keys=True)
        out[r["reviewer"], prompt, r["chosen"], r["rejected"]] += 1
    return out


@pytest.mark.parametrize("style,suffix", [("standard", ".jsonl"), ("conversational", ".parquet")])
def test_import_of_a_per_reviewer_export_gives_the_same_pairs(workspace, tmp_path, style, suffix):
    seed = Seed().comparison("q1", "Name a colour.", {"a": "red", "b": "blue", "c": "green", "d": " the"})
    seed.judge("q1", "ana", "a>b=c>d").judge("q1", "bo", "b>a>c>d").judge("q1", "cy", all_bad=True)
    seed.judge("q1", "dee", skipped=True)
    seed.comparison("q2", CHAT, {"x": "Goodbye!", "y": "What?"}).judge("q2", "ana", "x>y").judge("q2", "bo", "x=y")
    seed.comparison("q3", "Same answer twice?", {"a": "yes", "b": "no"}).judge("q3", "cy", "b>a")
    seed.write(workspace.db)
    out = tmp_path / f"pairs{suffix}"
    manifest = export(workspace.db, "pairs", out, style=style, with_meta=True)
    assert manifest["counts"]["rows"] == 13

    other = init_workspace(tmp_path / "other")
    imports.import_pairs(other.db, out, fmt="trl")
    assert _pairs(other.db, style) == _pairs(workspace.db, style)
