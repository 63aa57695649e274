"""The command line as a user meets it: help everywhere, every command in the README, exit codes, the database."""

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rankloop.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


ALL = [path for path, _ in _commands(main)]


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_command_has_help_and_is_in_the_readme(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    _, cmd = next((p, c) for p, c in _commands(main) if p == path)
    assert cmd.help, f"rankloop {' '.join(path)} has no help text"
    assert f"rankloop {' '.join(path)}" in (ROOT / "README.md").read_text(), "missing from the README"


def test_top_level_help_lists_the_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    for name in main.commands:
        assert name in out


def test_init_then_status_json(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["init", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["status", "--json", "--workspace", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["prompts"] == 0 and s["comparisons_pending"] == 0 and s["schema_version"] >= 2


def test_a_folder_that_is_not_a_workspace_exits_1_with_a_message(tmp_path):
    r = CliRunner().invoke(main, ["status", "--workspace", str(tmp_path)])
    assert r.exit_code == 1
    assert "not a rankloop workspace" in r.output


def test_the_cli_starts_without_importing_torch():
    code = "import sys; from rankloop.cli import main; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "False"]


def test_init_database_records_the_url_refuses_a_password_and_migrate_brings_an_older_schema_up(
        pg_databases, tmp_path, monkeypatch):
    """Team mode from the command line: `init --database` records the URL (never a password), `status` refuses a
    PostgreSQL schema that is behind naming `rankloop migrate`, and `rankloop migrate` applies what is missing."""
    from rankloop.config import load_config
    from rankloop.workspace import _migrated
    from store.db import read, transaction
    from store.dialect import redacted
    from store.migrations import MIGRATIONS, SCHEMA_VERSION

    secret = "s3cret-pw"
    url = pg_databases.create()
    user, host = url.removeprefix("postgresql://").split("@", 1)
    with_password = f"postgresql://{user}:{secret}@{host}"
    assert redacted(with_password) == f"postgresql://{user}:***@{host}"
    assert redacted(with_password + "?sslmode=require").endswith("?sslmode=require") and redacted(url) == url
    monkeypatch.setenv("PGPASSWORD", secret)  # where the password goes instead (the test cluster trusts anyone)
    runner = CliRunner()
    outputs = []

    def run(*args):
        r = runner.invoke(main, list(args))
        outputs.append(r.output)
        assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
        return r

    try:
        r = run("init", str(tmp_path / "refused"), "--database", with_password)
        assert r.exit_code == 1 and "holds a password" in r.output and "PGPASSWORD" in r.output, r.output
        assert not (tmp_path / "refused").exists()

        root = tmp_path / "w"
        r = run("init", str(root), "--database", url)
        assert r.exit_code == 0 and f"database: {url}" in r.output, r.output
        assert load_config(root / "rankloop.toml").workspace.database == url
        assert not (root / "rankloop.duckdb").exists()
        assert run("migrate", str(root)).output.strip() == f"{url}: already up to date"
        assert json.loads(run("status", "--json", "-w", str(root)).output)["schema_version"] == SCHEMA_VERSION

        with transaction(url, migration=True) as con:  # as if this rankloop were newer than the database
            con.execute("DELETE FROM schema_migrations WHERE version = ?", [SCHEMA_VERSION])
            con.execute("ALTER TABLE jobs DROP COLUMN runner_host")  # what the last migration (m007_job_host) made
        _migrated.discard(root.resolve())  # what a process started now sees
        r = run("status", "-w", str(root))
        assert r.exit_code == 1 and f"schema version {SCHEMA_VERSION - 1}" in r.output, r.output
        assert "run `rankloop migrate`" in r.output
        r = run("migrate", str(root))
        assert r.exit_code == 0 and r.output.strip() == f"{url}: applied {MIGRATIONS[-1].__name__}", r.output
        versions = read(url, lambda con: con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall())
        assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))
        assert run("status", "-w", str(root)).exit_code == 0
        assert not [o for o in outputs if secret in o]
    finally:
        pg_databases.drop(url)
