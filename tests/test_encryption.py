"""Encryption at rest (`rankloop init --encrypt`): DuckDB's own AES-GCM, the key from the environment only.

DuckDB 2 writes encrypted files with OpenSSL from its httpfs extension, which cannot be installed on a machine
without access to DuckDB's extension site; these tests then opt in to DuckDB's built-in mbedtls with
RANKLOOP_UNSAFE_CRYPTO=1 (same file format, weaker nonces), and one test checks the refusal without it.
"""

import json

import duckdb
import pytest
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from rankloop.cli import main
from store.db import is_encrypted

SECRET = "canary prompt 7f3a: the quick brown fox"
KEY = "correct horse battery staple"


def _httpfs_available() -> bool:
    try:
        duckdb.connect(":memory:").execute("LOAD httpfs")
        return True
    except duckdb.Error:
        return False


@pytest.fixture
def enc(tmp_path, monkeypatch):
    """An encrypted workspace holding one prompt with a known string, made through the CLI."""
    monkeypatch.setenv("RANKLOOP_KEY", KEY)
    monkeypatch.setenv("RANKLOOP_UNSAFE_CRYPTO", "1")
    root = tmp_path / "ws"
    r = CliRunner().invoke(main, ["init", "--encrypt", str(root)])
    assert r.exit_code == 0, r.output
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": SECRET}) + "\n")
    r = CliRunner().invoke(main, ["import", "prompts", str(tmp_path / "p.jsonl"), "-w", str(root)])
    assert r.exit_code == 0, r.output
    return root


def _status(root, **env):
    return CliRunner(env=env).invoke(main, ["status", "--json", "-w", str(root)])


def test_the_file_is_unreadable_without_the_key(enc):
    db = enc / "rankloop.duckdb"
    assert is_encrypted(db)
    with pytest.raises(duckdb.Error, match="encrypted"):
        duckdb.connect(str(db))
    for path in enc.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
            assert KEY.encode() not in path.read_bytes(), path  # the key is never stored in the workspace
    toml = (enc / "rankloop.toml").read_text()
    assert "encrypted = true" in toml


def test_readable_with_the_key_through_the_normal_commands(enc, tmp_path):
    r = _status(enc)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["prompts"] == 1
    r = CliRunner().invoke(main, ["export", "sft", "--out", str(tmp_path / "sft.jsonl"), "-w", str(enc)])
    assert r.exit_code == 0, r.output


def test_a_key_file_works_and_must_live_outside_the_workspace(enc, tmp_path, monkeypatch):
    monkeypatch.delenv("RANKLOOP_KEY")
    (tmp_path / "key").write_text(KEY + "\n")
    monkeypatch.setenv("RANKLOOP_KEY_FILE", str(tmp_path / "key"))
    assert json.loads(_status(enc).output)["prompts"] == 1
    (enc / "key").write_text(KEY)
    monkeypatch.setenv("RANKLOOP_KEY_FILE", str(enc / "key"))
    r = _status(enc)
    assert r.exit_code == 1 and "the key file is inside the workspace" in r.output


@pytest.mark.parametrize("env, message", [
    ({"RANKLOOP_KEY": "a wrong key!"}, "wrong encryption key"),
    ({"RANKLOOP_KEY": ""}, "is encrypted; set RANKLOOP_KEY"),
    ({"RANKLOOP_KEY": "short"}, "at least 8 characters"),
])
def test_a_wrong_or_missing_key_is_a_clear_error(enc, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = _status(enc)
    assert r.exit_code == 1 and message in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.skipif(_httpfs_available(), reason="httpfs (OpenSSL) is installed here: nothing is refused")
def test_without_openssl_the_unsafe_crypto_needs_an_opt_in(enc, monkeypatch):
    monkeypatch.delenv("RANKLOOP_UNSAFE_CRYPTO")
    r = _status(enc)
    assert r.exit_code == 1 and "httpfs" in r.output and "RANKLOOP_UNSAFE_CRYPTO=1" in r.output


def test_init_encrypt_needs_a_key_and_an_unencrypted_workspace_ignores_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RANKLOOP_KEY", raising=False)
    monkeypatch.delenv("RANKLOOP_KEY_FILE", raising=False)
    r = CliRunner().invoke(main, ["init", "--encrypt", str(tmp_path / "w")])
    assert r.exit_code == 1 and "set RANKLOOP_KEY" in r.output
    assert not (tmp_path / "w" / "rankloop.duckdb").exists()
    assert CliRunner().invoke(main, ["init", str(tmp_path / "plain")]).exit_code == 0
    monkeypatch.setenv("RANKLOOP_KEY", KEY)  # a key in the environment does not disturb a plain workspace
    assert _status(tmp_path / "plain").exit_code == 0
    r = CliRunner().invoke(main, ["init", "--encrypt", str(tmp_path / "plain")])
    assert r.exit_code == 1 and "already exists unencrypted" in r.output


def test_backup_and_restore_stay_encrypted(enc, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["backup", str(tmp_path / "bk"), "-w", str(enc)]).exit_code == 0
    assert is_encrypted(tmp_path / "bk" / "rankloop.duckdb")
    assert SECRET.encode() not in (tmp_path / "bk" / "rankloop.duckdb").read_bytes()
    r = runner.invoke(main, ["restore", str(tmp_path / "bk"), str(tmp_path / "back")])
    assert r.exit_code == 0, r.output
    assert json.loads(_status(tmp_path / "back").output)["prompts"] == 1
    r = CliRunner(env={"RANKLOOP_KEY": "another key!"}).invoke(
        main, ["restore", str(tmp_path / "bk"), str(tmp_path / "back2")])
    assert r.exit_code == 1 and "wrong encryption key" in r.output


def test_the_app_logs_in_on_an_encrypted_workspace(enc, monkeypatch):
    from store.users import add_user
    from tests.test_app_login import APP, log_in

    add_user(enc / "rankloop.duckdb", "rita", "reviewer", "rita's password", actor="test")
    monkeypatch.setenv("RANKLOOP_WORKSPACE", str(enc))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    log_in(at, "rita", "rita's password")
    assert at.title[0].value == "Rank the answers"
