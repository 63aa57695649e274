"""The `rankloop` command line: each command parses, opens the workspace, calls one library function, reports."""

from __future__ import annotations

import importlib

import click

from rankloop import __version__
from training.device import prefer_huge_pages

prefer_huge_pages()  # before any command imports torch: a CPU trainer's peak memory, training/device.py says why

# (module, attribute) of each command, in the order `rankloop --help` lists them.
COMMANDS = [
    ("rankloop.commands.workspace", "init_command"),
    ("rankloop.commands.workspace", "status_command"),
    ("rankloop.commands.workspace", "migrate_command"),
    ("rankloop.commands.imports", "import_group"),
    ("rankloop.commands.export", "export_group"),
    ("rankloop.commands.models", "models_group"),
    ("rankloop.commands.generate", "generate_command"),
    ("rankloop.commands.serve", "serve_command"),
    ("rankloop.commands.users", "users_group"),
    ("rankloop.commands.backup", "backup_command"),
    ("rankloop.commands.backup", "restore_command"),
    ("rankloop.commands.reward", "train_group"),
    ("rankloop.commands.reward", "eval_group"),
    ("rankloop.commands.reward", "score_command"),
    ("rankloop.commands.policy", "round_group"),
    ("rankloop.commands.loop", "simulate_command"),
    ("rankloop.commands.loop", "loop_command"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rankloop")
def main() -> None:
    """rankloop: rank model outputs, train reward models and policies on the rankings, and close the loop."""


for module, attr in COMMANDS:
    main.add_command(getattr(importlib.import_module(module), attr))
importlib.import_module("rankloop.commands.influence")  # adds `eval influence` to the eval group
