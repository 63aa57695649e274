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
