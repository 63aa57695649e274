"""Hostile or broken input through the command line and the app: a clear message naming what and where, a
non-zero exit code, and the workspace exactly as it was (conftest's table_hash before and after).

One table: every broken import file of tests/test_import_bad_input.py (reused, run through the CLI here), then
imports, config files, CLI arguments, model folders and runs that only this file tries. The app's inputs (edits
and rationales on the Rank page) are a second table at the end.
"""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import store.reading
from rankloop.cli import main
from store.imports import import_pairs
from tests import test_import_bad_input as imports
from tests.conftest import FIXTURES, table_hash
from tests.test_import_bad_input import ARGILLA, GOOD, jl

Setup = Callable[[Path, Path], list[str]]  # (tmp folder, workspace root) -> CLI arguments


def _import_case(case: tuple) -> tuple:
    case_id, name, data, what, fmt, fragments = case

    def setup(tmp: Path, ws: Path) -> list[str]:
        if data is not None:
            (tmp / name).write_bytes(data)
        return ["import", what, str(tmp / name), *(["--format", fmt] if fmt else [])]

    code = 2 if case_id == "unknown-format-name" else 1  # click refuses a --format outside its choices
    return (f"import:{case_id}", setup, [] if code == 2 else [name, *fragments], code)


def _file(name: str, data: bytes, *args: str) -> Setup:
    def setup(tmp: Path, ws: Path) -> list[str]:
        (tmp / name).write_bytes(data)
        return [a.replace("{f}", str(tmp / name)) for a in args]
    return setup


def _toml(extra: str, *args: str, raw: bytes | None = None) -> Setup:
    def setup(tmp: Path, ws: Path) -> list[str]:
        cfg = ws / "rankloop.toml"
        cfg.write_bytes(raw if raw is not None else cfg.read_bytes() + extra.encode())
        return list(args)
    return setup


def _args(*args: str) -> Setup:
    return lambda tmp, ws: [a.replace("{tmp}", str(tmp)).replace("{ws}", str(ws)) for a in args]


def _folder(files: dict[str, bytes], *args: str) -> Setup:
    def setup(tmp: Path, ws: Path) -> list[str]:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        return [a.replace("{tmp}", str(tmp)) for a in args]
    return setup


ARGILLA_UNKNOWN = {**ARGILLA, "ranking.responses": [["response-1", "response-9", "response-2"]],
                   **{k: v[:1] for k, v in ARGILLA.items() if k.startswith("ranking.responses.")}}

# (id, setup, fragments the output must contain, exit code)
CASES = [_import_case(c) for c in imports.CASES] + [
    # imports only tried here
    ("import:ranking-names-unknown-response", _file("a.jsonl", jl(ARGILLA_UNKNOWN), "import", "pairs", "{f}"),
     ["a.jsonl:1: field 'ranking.responses[0]'"], 1),
    ("import:prompts-nul-byte", _file("p.txt", b"fine\nnot\x00fine\n", "import", "prompts", "{f}"),
     ["p.txt:2: ", "NUL byte"], 1),
    ("import:prompts-huge-line", _file("p.jsonl", jl({"prompt": "ok"}, {"prompt": "y" * 500}), "import", "prompts",
                                       "{f}"), ["p.jsonl:2: ", "longer than 200 bytes"], 1),
    ("import:prompts-truncated-json", _file("p.jsonl", b'{"prompt": "a"}\n{"prompt": "b', "import", "prompts",
                                            "{f}"), ["p.jsonl:2: ", "broken JSON"], 1),
    ("import:utf16", _file("p.jsonl", json.dumps(GOOD).encode("utf-16") + b"\n", "import", "pairs", "{f}"),
     ["p.jsonl:1: ", "NUL byte"], 1),
    ("import:a-folder", _args("import", "prompts", "{tmp}"), ["is a directory"], 2),
    # config files
    ("config:generation-k-mistyped", _toml("", "status", raw=b"[generation]\nk = 'four'\n"),
     ["rankloop.toml: [generation] k: expected int, got str"], 1),
    ("config:not-toml", _toml("", "status", raw=b"[generation\n"), ["rankloop.toml: not valid TOML"], 1),
    ("config:latin-1", _toml("", "status", raw="# caf\xe9\n".encode("latin-1")), ["rankloop.toml: not valid UTF-8"],
     1),
    ("config:encrypted-mistyped", _toml("", "status", raw=b"[workspace]\nencrypted = 'yes'\n"),
     ["[workspace] encrypted: expected bool, got str"], 1),
    ("config:encrypted-but-plain", _toml("", "status", raw=b"[workspace]\nencrypted = true\n"),
     ["the workspace database is encrypted; set RANKLOOP_KEY"], 1),
    ("config:reward-lr-mistyped", _toml('\n[reward]\nlearning_rate = "fast"\n', "train", "reward"),
     ["rankloop.toml: [reward] learning_rate: expected float, got str"], 1),
    ("config:reward-unknown-field", _toml("\n[reward]\nlernrate = 1\n", "train", "reward"),
     ["rankloop.toml: [reward] ", "lernrate"], 1),
    ("config:reward-batch-zero", _toml("\n[reward]\nper_device_train_batch_size = 0\n", "train", "reward"),
     ["[reward] per_device_train_batch_size: must be >= 1"], 1),
    ("config:dpo-beta-negative", _toml("\n[dpo]\nbeta = -1.0\n", "train", "dpo"), ["[dpo] beta: must be > 0"], 1),
    ("config:dpo-loss-mistyped", _toml('\n[dpo]\nloss_type = "nope"\n', "train", "dpo"), ["[dpo] loss_type"], 1),
    ("config:reward-set-unknown", _args("train", "reward", "--set", "nosuch=1"), ["nosuch"], 1),
    # command-line arguments
    ("cli:export-unknown-suffix", _args("export", "pairs", "--out", "{tmp}/x.txt"),
     ["x.txt: unknown output format '.txt'"], 1),
    ("cli:export-min-agreement-range", _args("export", "pairs", "--out", "{tmp}/x.jsonl", "--min-agreement", "2"),
     ["--min-agreement"], 2),
    ("cli:export-round-not-int", _args("export", "pairs", "--out", "{tmp}/x.jsonl", "--round", "one"),
     ["--round"], 2),
    ("cli:export-missing-folder", _args("export", "kto", "--out", "{tmp}/no/x.jsonl"), ["does not exist"], 1),
    ("cli:users-bad-name", _args("users", "add", "bad name", "--role", "reviewer"), ["user name"], 1),
    ("cli:users-bad-role", _args("users", "add", "sam", "--role", "superuser"), ["--role"], 2),
    ("cli:users-unknown", _args("users", "deactivate", "nobody"), ["no account named 'nobody'"], 1),
    ("cli:status-not-a-workspace", _args("status", "-w", "{tmp}"), ["not a rankloop workspace"], 1),
    ("cli:backup-into-non-empty", _folder({"bk/x": b"x"}, "backup", "{tmp}/bk"), ["not an empty folder"], 1),
    ("cli:backup-into-workspace", _args("backup", "{ws}/runs/bk"), ["outside the workspace"], 1),
    ("cli:restore-not-a-backup", _folder({"bk/x": b"x"}, "restore", "{tmp}/bk", "{tmp}/new"),
     ["not a rankloop backup"], 1),
    ("cli:restore-over-workspace", _args("restore", "{ws}", "{ws}"), ["must not overlap"], 1),
    ("cli:train-resume-unknown", _args("train", "reward", "--resume", "999"), ["no run with id 999"], 1),
    ("cli:eval-unknown-model", _args("eval", "reward", "nosuch"), ["no model named 'nosuch'"], 1),
    ("cli:score-unknown-model", _args("score", "--model", "nosuch"), ["no model named 'nosuch'"], 1),
    # model folders
    ("model:missing-folder", _args("models", "add", "m", "{tmp}/nowhere"), ["no such model folder"], 1),
    ("model:no-config", _folder({"m/weights.bin": b"\0"}, "models", "add", "m", "{tmp}/m"),
     ["not a model folder (no config.json"], 1),
    ("model:corrupt-config", _folder({"m/config.json": b"{not json"}, "models", "add", "m", "{tmp}/m"),
     ["m/config.json: not a valid model config"], 1),
    ("model:config-not-object", _folder({"m/config.json": b"[1, 2]"}, "models", "add", "m", "{tmp}/m"),
     ["expected a JSON object"], 1),
    ("model:traversing-name", _args("models", "add", "../../x", "org/model"), ["model name '../../x'"], 1),
    ("model:duplicate-name", _args("models", "add", "arena", "org/model"), ["a model named 'arena' already exists"],
     1),
    ("model:train-base-missing", _args("train", "reward", "--base", "{tmp}/nowhere"), ["base: ", "no such folder"], 1),
]


@pytest.fixture
def populated(workspace):
    """A workspace that already holds data (and a model row), so 'unchanged' means something."""
    from store.models import add_model

    import_pairs(workspace.db, FIXTURES / "fastchat_arena_battles.SYNTHETIC.jsonl")
    add_model(workspace.db, "arena", "external", base="org/arena")
    return workspace


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error_and_changes_nothing(populated, tmp_path, monkeypatch, case):
    case_id, setup, fragments, code = case
    if "huge-line" in case_id:
        monkeypatch.setattr(store.reading, "MAX_LINE_BYTES", 200)
    monkeypatch.delenv("RANKLOOP_KEY", raising=False)
    monkeypatch.setenv("RANKLOOP_PASSWORD", "a long enough password")
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(populated.root))
    before = table_hash(populated.db)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    args = setup(tmp_path, populated.root)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.exception
    for fragment in fragments:
        assert fragment in r.output, r.output
    assert table_hash(populated.db) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name not in files_before]


# The cases whose error comes from what the database holds (the rest are refused before any SQL runs).
SQL_CASES = ["cli:users-unknown", "cli:train-resume-unknown", "cli:eval-unknown-model", "cli:score-unknown-model",
             "model:duplicate-name"]


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SQL_CASES], ids=SQL_CASES)
def test_bad_input_that_reaches_the_database_changes_nothing_on_postgresql(populated, tmp_path, monkeypatch, case,
                                                                          backend):
    test_bad_input_gives_a_clear_error_and_changes_nothing(populated, tmp_path, monkeypatch, case)


def test_the_table_has_at_least_forty_cases():
    assert len(CASES) >= 40


# --- the app: what a reviewer types on the Rank page ------------------------------------------------------------

UI_REFUSED = [
    ("enormous-edit", {"edit": "x" * 100_001}, "edited_text: 100,001 characters, more than the 100,000 allowed"),
    ("enormous-rationale", {"why": "y" * 10_001}, "rationale: 10,001 characters"),
    ("nul-in-edit", {"edit": "a\0b"}, "edited_text: contains a NUL character"),
    ("nul-in-rationale", {"why": "a\0b"}, "rationale: contains a NUL character"),
]
UI_KEPT = [
    ("empty-edit", {"edit": "   "}, None),
    ("unicode", {"edit": "naïve café 日本語 🙂 Ω≈ç√", "why": "Zalgo t̸̢e̵x̴t"}, "naïve café 日本語 🙂 Ω≈ç√"),
    ("right-to-left", {"edit": "مرحبا بالعالم \u202egnp.exe", "why": "שלום"}, "مرحبا بالعالم \u202egnp.exe"),
]


def _rank_page(workspace, monkeypatch):
    from store.users import add_user
    from tests.test_app_login import app, log_in
    from tests.test_queue import seed_comparisons

    add_user(workspace.db, "rita", "reviewer", "rita's password", actor="test")
    seed_comparisons(workspace.db, 1, k=2)
    return log_in(app(workspace, monkeypatch), "rita", "rita's password")


def _choose(at):
    from tests.test_app_login import button

    button(at, "A better").click().run()  # keeps the choice as the lease's draft
    return at


def _type_and_submit(at, fields: dict[str, str]):
    from tests.test_app_login import button

    item = at.session_state["item"]
    for name, value in fields.items():
        at.session_state[f"{name}:{item.lease_id}"] = value
    button(at, "Submit").click().run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("case", UI_REFUSED, ids=[c[0] for c in UI_REFUSED])
def test_the_rank_page_refuses_bad_text_and_stores_nothing(workspace, monkeypatch, case):
    from tests.test_app_login import texts

    _, fields, message = case
    at = _choose(_rank_page(workspace, monkeypatch))
    before = table_hash(workspace.db)
    _type_and_submit(at, fields)
    assert f"Not stored: {message}" in texts(at)
    assert table_hash(workspace.db) == before


@pytest.mark.parametrize("case", UI_KEPT, ids=[c[0] for c in UI_KEPT])
def test_the_rank_page_keeps_odd_but_valid_text_verbatim(workspace, monkeypatch, case):
    from store.db import read

    _, fields, stored = case
    at = _choose(_rank_page(workspace, monkeypatch))
    _type_and_submit(at, fields)
    row = read(workspace.db, lambda con: con.execute("SELECT edited_text, rationale FROM judgments").fetchall())
    assert len(row) == 1 and row[0][0] == stored
    if "why" in fields:
        assert row[0][1] == fields["why"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_rank_page_keeps_unicode_verbatim_on_postgresql(workspace, monkeypatch, backend):
    test_the_rank_page_keeps_odd_but_valid_text_verbatim(workspace, monkeypatch, UI_KEPT[1])
