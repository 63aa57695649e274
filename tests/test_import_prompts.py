"""Importing prompts: JSONL, CSV, Parquet and plain text, read back from the database."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from rankloop.commands.imports import import_group
from store.db import read
from store.imports import import_prompts

pytestmark = pytest.mark.both_backends

DEMO = Path(__file__).resolve().parents[1] / "rankloop" / "data" / "demo_prompts.jsonl"


def prompts(db):
    rows = read(db, lambda con: con.execute(
        "SELECT text, messages, source, split, tags, external_id FROM prompts ORDER BY id").fetchall())
    return [{"text": t, "messages": json.loads(m), "source": s, "split": sp, "tags": list(tags), "id": e}
            for t, m, s, sp, tags, e in rows]


def test_jsonl_with_splits_tags_and_ids_then_again(workspace):
    result = import_prompts(workspace.db, DEMO, source="demo")
    assert result["prompts_added"] == 24 and result["prompts_already_present"] == 0
    rows = prompts(workspace.db)
    first = json.loads(DEMO.read_text(encoding="utf-8").splitlines()[0])
    assert rows[0] == {"text": first["prompt"], "messages": [{"role": "user", "content": first["prompt"]}],
                       "source": "demo", "split": "train", "tags": first["tags"], "id": "demo-01"}
    assert sum(r["split"] == "eval" for r in rows) == 4
    # The same file again adds nothing and says so.
    again = import_prompts(workspace.db, DEMO)
    assert again == {"file": str(DEMO), "prompts_read": 24, "prompts_added": 0, "prompts_already_present": 24}
    assert len(prompts(workspace.db)) == 24


def test_jsonl_messages_and_gzip(workspace, tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    f = tmp_path / "chats.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as out:
        out.write(json.dumps({"messages": chat, "tags": "a; b"}) + "\n\n")
        out.write(json.dumps({"prompt": [{"role": "user", "content": "Plain?"}], "split": "eval"}) + "\n")
    assert import_prompts(workspace.db, f)["prompts_added"] == 2
    a, b = prompts(workspace.db)
    assert a["messages"] == chat and a["text"] is None and a["tags"] == ["a", "b"] and a["source"] == f.name
    assert b["split"] == "eval" and b["text"] is None


def test_csv_with_quoted_newlines_and_optional_columns(workspace, tmp_path):
    f = tmp_path / "prompts.csv"
    f.write_text('prompt,split,tags,source\n"Line one\nline two",eval,x;y,team\n"Say ""hi"".",,,\n',
                 encoding="utf-8")
    import_prompts(workspace.db, f)
    a, b = prompts(workspace.db)
    assert a == {"text": "Line one\nline two", "messages": [{"role": "user", "content": "Line one\nline two"}],
                 "source": "team", "split": "eval", "tags": ["x", "y"], "id": None}
    assert b["text"] == 'Say "hi".' and b["split"] == "train" and b["source"] == "prompts.csv"


def test_parquet_text_column_and_overrides(workspace, tmp_path):
    f = tmp_path / "prompts.parquet"
    pd.DataFrame({"text": ["One?", "Two?"], "split": ["train", "train"], "tags": [["p"], ["q", "r"]]}).to_parquet(f)
    import_prompts(workspace.db, f, source="pq", split="eval")  # the caller's split wins over the file's
    assert [(r["text"], r["split"], r["source"], r["tags"]) for r in prompts(workspace.db)] == [
        ("One?", "eval", "pq", ["p"]), ("Two?", "eval", "pq", ["q", "r"])]


def test_plain_text_one_per_line(workspace, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("\ufeffFirst prompt\n\n   \nSecond prompt\n", encoding="utf-8")
    result = import_prompts(workspace.db, f)
    assert result["prompts_added"] == 2
    assert [r["text"] for r in prompts(workspace.db)] == ["First prompt", "Second prompt"]


def test_cli_prompts_prints_counts(workspace):
    runner = CliRunner()
    out = runner.invoke(import_group, ["prompts", str(DEMO), "--source", "demo", "-w", str(workspace.root)])
    assert out.exit_code == 0, out.output
    assert "24 prompts added, 0 already present" in out.output
    out = runner.invoke(import_group, ["prompts", str(DEMO), "-w", str(workspace.root)])
    assert out.exit_code == 0 and "0 prompts added, 24 already present" in out.output
