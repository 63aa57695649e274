"""The import rule of docs/architecture.md, checked on the source: the library never calls into the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("store", "training", "annotate", "reward", "rl", "rankloop", "scripts")
CLI = (ROOT / "rankloop" / "commands", ROOT / "rankloop" / "cli.py")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (`from a import b` counts `a` and `a.b`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def library_files() -> list[Path]:
    files = [p for pkg in LIBRARY for p in (ROOT / pkg).rglob("*.py")]
    return [p for p in files if not any(p == c or c in p.parents for c in CLI)]


def test_nothing_outside_the_cli_imports_rankloop_commands():
    files = library_files()
    assert len(files) > 50 and ROOT / "rankloop" / "loop.py" in files  # the scan reaches the library
    offenders = sorted(f"{p.relative_to(ROOT)} imports {m}" for p in files for m in imported_modules(p)
                       if m == "rankloop.commands" or m.startswith("rankloop.commands."))
    assert offenders == []


def test_the_scan_sees_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from rankloop.commands.reward import _overrides\n", encoding="utf-8")
    assert "rankloop.commands.reward" in imported_modules(probe)


def test_the_workspace_has_a_type_on_the_ground_floor(workspace):
    """`store.workspace.WorkspaceLike` is what training/, reward/ and rl/ annotate `ws` with; the top floor's
    Workspace is one, and the type itself imports nothing above `store`."""
    from store.workspace import WorkspaceLike

    assert isinstance(workspace, WorkspaceLike)
    allowed = {"__future__", "__future__.annotations", "pathlib", "pathlib.Path", "typing", "typing.Protocol",
               "typing.runtime_checkable"}
    assert imported_modules(ROOT / "store" / "workspace.py") <= allowed
