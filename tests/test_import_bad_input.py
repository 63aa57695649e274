"""Bad input is refused whole: an error naming file, line and field, exit code 1, and the database as it was."""

import gzip
import json

import pytest
from click.testing import CliRunner

import store.reading
from rankloop.commands.imports import import_group
from store.errors import InputError
from store.imports import import_pairs, import_prompts
from tests.conftest import FIXTURES, table_hash


def jl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


GOOD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
GOOD2 = {"prompt": "3+3?", "chosen": "6", "rejected": "7"}
HH_ROW = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hello", "rejected": " Go away"}
BATTLE = json.loads((FIXTURES / "fastchat_arena_battles.SYNTHETIC.jsonl").read_text().splitlines()[0])
TREE = json.loads((FIXTURES / "oasst_message_trees_first15.jsonl").read_text().splitlines()[0])
ARGILLA = json.loads((FIXTURES / "argilla_v2_records_ranking.SYNTHETIC.jsonl").read_text().splitlines()[0])
TASK = json.loads((FIXTURES / "labelstudio_pairwise_export.SYNTHETIC.json").read_text())[0]


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _set(obj, path, value):
    obj = json.loads(json.dumps(obj))
    target = obj
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return obj


def _drop(obj, key):
    return {k: v for k, v in obj.items() if k != key}


# (id, file name, bytes, what: pairs|prompts, format or None, fragments the message must contain)
CASES = [
    ("broken-json", "p.jsonl", jl(GOOD, b'{"prompt": "b", "chosen": "x"'), "pairs", None,
     [":2: ", "broken JSON"]),
    ("latin-1", "p.jsonl", jl(GOOD, '{"prompt": "café", "chosen": "a", "rejected": "b"}'.encode("latin-1")),
     "pairs", None, [":2: ", "not valid UTF-8"]),
    ("missing-field", "p.jsonl", jl(GOOD, _drop(GOOD2, "rejected")), "pairs", "trl",
     [":2: field 'rejected': missing"]),
    ("mistyped-field", "p.jsonl", jl(GOOD, {**GOOD2, "chosen": 6}), "pairs", None,
     [":2: field 'chosen': expected str or list, got int"]),
    ("mistyped-margin", "p.jsonl", jl(GOOD, {**GOOD2, "margin": "big"}), "pairs", None,
     [":2: field 'margin': expected a number"]),
    ("empty-file", "p.jsonl", b"", "pairs", "trl", ["p.jsonl: empty file"]),
    ("blank-file", "p.jsonl", b"\n  \n", "pairs", None, ["p.jsonl: empty file"]),
    ("duplicate-rows", "p.jsonl", jl(GOOD, GOOD2, GOOD), "pairs", None, [":3: ", "line 1", "duplicate"]),
    ("huge-line", "p.jsonl", jl(GOOD, {**GOOD2, "chosen": "x" * 500}), "pairs", None,
     [":2: ", "longer than 200 bytes"]),
    ("nul-byte", "p.jsonl", jl(GOOD, b'{"prompt": "a\x00", "chosen": "a", "rejected": "b"}'), "pairs", None,
     [":2: ", "NUL byte"]),
    ("truncated-gzip", "p.jsonl.gz", _gz(jl(*[GOOD] * 50))[:-30], "pairs", "trl", ["p.jsonl.gz: ", "gzip"]),
    ("unknown-shape", "p.jsonl", jl({"question": "?", "answer": "!"}), "pairs", None,
     [":1: ", "cannot tell the format", "trl, hh, oasst, labelstudio, argilla, arena"]),
    ("unknown-format-name", "p.jsonl", jl(GOOD), "pairs", "bogus", ["field 'format'", "unknown format 'bogus'"]),
    ("same-reviewer-twice", "p.jsonl", jl(GOOD, GOOD2, {**GOOD, "chosen": "5", "rejected": "4"}), "pairs", None,
     [":3: field 'rejected'", "already ranked these responses", "line 1"]),
    ("same-text", "p.jsonl", jl(GOOD, {**GOOD2, "rejected": "6"}), "pairs", None,
     [":2: field 'rejected'", "same text"]),
    ("hh-not-a-transcript", "p.jsonl", jl(HH_ROW, {**HH_ROW, "prompt": "Hi"}), "pairs", "hh",
     [":2: field 'prompt'", "HH transcript"]),
    ("hh-raw-different-conversations", "p.jsonl",
     jl({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}), "pairs", None,
     [":1: field 'rejected'", "not the same conversation"]),
    ("arena-winner", "p.jsonl", jl(BATTLE, {**BATTLE, "winner": "model_c"}), "pairs", None,
     [":2: field 'winner'", "model_a"]),
    ("arena-nested-type", "p.jsonl", jl(_set(BATTLE, ["conversation_a", 0, "content"], 5)), "pairs", None,
     [":1: field 'conversation_a[0].content': expected str"]),
    ("oasst-rank", "p.jsonl", jl(TREE, _set(TREE, ["prompt", "replies", 1, "rank"], "first")), "pairs", None,
     [":2: field 'prompt.replies[1].rank'"]),
    ("argilla-ranking", "p.jsonl", jl(_set(ARGILLA, ["ranking.responses", 0], ["response-1", "response-2"])),
     "pairs", None, [":1: field 'ranking.responses[0]'", "each of"]),
    ("labelstudio-choice", "p.json",
     json.dumps([TASK, _set(TASK, ["annotations", 0, "result"], [])], indent=2).encode(), "pairs", None,
     [f":{2 + len(json.dumps(TASK, indent=2).splitlines())}: field 'annotations[0].result'",  # the task's line
      "no pairwise choice"]),
    ("labelstudio-truncated", "p.json", json.dumps([TASK, TASK], indent=2).encode()[:-200], "pairs", None,
     ["p.json:", "broken JSON"]),
    ("broken-parquet", "p.parquet", b"PAR1 not really", "pairs", "trl", ["p.parquet: ", "Parquet"]),
    ("two-problems", "p.jsonl", jl(GOOD, _drop(GOOD2, "chosen"), {**GOOD, "prompt": 1}), "pairs", "trl",
     ["2 problem(s)", ":2: field 'chosen': missing", ":3: field 'prompt'"]),
    ("lone-surrogate", "p.jsonl", jl(GOOD, b'{"prompt": "a\\ud800", "chosen": "x", "rejected": "y"}'), "pairs", None,
     [":2: ", "not valid Unicode"]),
    ("pairs-from-csv", "p.csv", b"prompt,chosen,rejected\na,b,c\n", "pairs", "trl", ["p.csv: ", "not csv"]),
    ("prompts-csv-no-column", "p.csv", b"question,split\nHi?,train\n", "prompts", None,
     [":1: field 'prompt'", "missing column"]),
    ("prompts-csv-short-row", "p.csv", b'prompt,split\n"a\nb",eval\nc\n', "prompts", None,
     [":4: ", "expected 2 fields"]),
    ("prompts-mistyped", "p.jsonl", jl({"prompt": "a"}, {"prompt": 7}), "prompts", None,
     [":2: field 'prompt': expected str or a list of messages, got int"]),
    ("prompts-bad-role", "p.jsonl", jl({"messages": [{"role": "robot", "content": "x"}]}), "prompts", None,
     [":1: field 'messages[0].role'"]),
    ("prompts-duplicate", "p.txt", b"one\ntwo\none\n", "prompts", None, [":3: ", "line 1", "duplicate"]),
    ("prompts-latin-1", "p.txt", "caf\xe9\n".encode("latin-1"), "prompts", None, [":1: ", "UTF-8"]),
    ("prompts-lone-surrogate", "p.jsonl", jl({"prompt": "a"}, b'{"prompt": "\\udfff"}'), "prompts", None,
     [":2: ", "not valid Unicode"]),
    ("prompts-empty", "p.csv", b"", "prompts", None, ["p.csv: empty file"]),
    ("prompts-missing-file", "nothere.jsonl", None, "prompts", None, ["nothere.jsonl: file not found"]),
]


@pytest.fixture
def populated(workspace):
    """A workspace that already holds data, so 'unchanged' means something."""
    import_pairs(workspace.db, FIXTURES / "fastchat_arena_battles.SYNTHETIC.jsonl")
    return workspace


def _run(ws, path, what, fmt):
    if what == "prompts":
        return import_prompts(ws.db, path)
    return import_pairs(ws.db, path, fmt=fmt)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_whole(populated, tmp_path, monkeypatch, case):
    case_id, name, data, what, fmt, fragments = case
    if case_id == "huge-line":
        monkeypatch.setattr(store.reading, "MAX_LINE_BYTES", 200)
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    before = table_hash(populated.db)
    with pytest.raises(InputError) as e:
        _run(populated, path, what, fmt)
    message = str(e.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "nothing was written" in message
    assert table_hash(populated.db) == before


@pytest.mark.parametrize("backend", ["postgresql"])  # the other cases are refused before any SQL runs
def test_bad_input_found_while_writing_is_refused_whole_on_postgresql(populated, tmp_path, monkeypatch, backend):
    case = next(c for c in CASES if c[0] == "lone-surrogate")
    test_bad_input_is_refused_whole(populated, tmp_path, monkeypatch, case)


@pytest.mark.both_backends
def test_reimport_is_refused_and_names_a_line(populated, tmp_path):
    arena = FIXTURES / "fastchat_arena_battles.SYNTHETIC.jsonl"
    before = table_hash(populated.db)
    with pytest.raises(InputError, match=r"fastchat_arena_battles.SYNTHETIC.jsonl:1: already imported: all 4"):
        import_pairs(populated.db, arena)
    # A file with one new battle and one already imported: refused whole too, naming the old one's line.
    new = json.loads(arena.read_text().splitlines()[0])
    new["conversation_b"][-1]["content"] = "Marseille."
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(new) + "\n" + arena.read_text().splitlines()[1] + "\n")
    with pytest.raises(InputError, match=r"mixed.jsonl:2: already imported: 1 of the 2"):
        import_pairs(populated.db, mixed)
    assert table_hash(populated.db) == before


@pytest.mark.both_backends
def test_empty_responses_are_allowed(workspace, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(jl({"prompt": "Say nothing.", "chosen": "", "rejected": "Something."}))
    assert import_pairs(workspace.db, f)["judgments"] == 1


def test_cli_reports_the_error_and_exits_non_zero(populated, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jl(GOOD, _drop(GOOD2, "rejected")))
    before = table_hash(populated.db)
    result = CliRunner().invoke(import_group, ["pairs", str(bad), "-w", str(populated.root)])
    assert result.exit_code == 1
    assert f"{bad}:2: field 'rejected': missing" in result.output
    assert "Traceback" not in result.output
    unknown = CliRunner().invoke(import_group, ["pairs", str(bad), "--format", "nope", "-w", str(populated.root)])
    assert unknown.exit_code == 2 and "trl" in unknown.output  # click lists the choices
    assert table_hash(populated.db) == before


@pytest.mark.both_backends
def test_cli_pairs_prints_what_was_added(workspace):
    result = CliRunner().invoke(import_group, ["pairs", str(FIXTURES / "argilla_v2_records_ranking.SYNTHETIC.jsonl"),
                                               "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "(argilla): 2 comparisons, 6 responses, 2 judgments added" in result.output
    assert "left out: 1 draft responses (not submitted)" in result.output


@pytest.mark.both_backends
def test_an_import_that_fails_midway_leaves_the_database_as_it_was(populated, tmp_path, monkeypatch):
    """Prompts, responses, comparisons and new reviewers are written, then the judgments' step fails: the one
    transaction rolls all of it back (on PostgreSQL too), and the same file imports cleanly afterwards."""
    import store.batch

    real = store.batch.ensure_reviewers

    def then_fail(con, names, kind="import"):
        real(con, names, kind)
        assert con.execute("SELECT count(*) FROM comparisons").fetchone()[0] > 4  # the new rows are there
        raise RuntimeError("the disk filled up")

    f = tmp_path / "p.jsonl"
    f.write_bytes(jl({**GOOD, "reviewer": "new-reviewer"}, GOOD2))
    before = table_hash(populated.db)
    monkeypatch.setattr(store.batch, "ensure_reviewers", then_fail)
    with pytest.raises(RuntimeError, match="the disk filled up"):
        import_pairs(populated.db, f)
    assert table_hash(populated.db) == before
    monkeypatch.setattr(store.batch, "ensure_reviewers", real)
    assert import_pairs(populated.db, f)["judgments"] == 2
