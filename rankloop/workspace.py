"""A workspace folder: `rankloop.toml`, `rankloop.duckdb` and `runs/`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rankloop.config import Config, load_config, render_config
from store.migrations import migrate

CONFIG_NAME = "rankloop.toml"
DB_NAME = "rankloop.duckdb"


class NotAWorkspace(FileNotFoundError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Workspace:
    root: Path
    config: Config

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"


_migrated: set[Path] = set()


def init_workspace(root: str | Path, config: Config | None = None) -> Workspace:
    """Create (or complete) a workspace; an existing config is kept, the schema brought up to date."""
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    cfg_path = root / CONFIG_NAME
    if not cfg_path.exists():
        cfg_path.write_text(render_config(config or Config()), encoding="utf-8")
    return open_workspace(root)


def open_workspace(root: str | Path) -> Workspace:
    """Open an existing workspace, applying any pending schema migrations once per process."""
    root = Path(root).resolve()
    if not (root / CONFIG_NAME).is_file():
        raise NotAWorkspace(
            f"{root}: not a rankloop workspace (no {CONFIG_NAME}); create one with `rankloop init DIR`"
        )
    cfg = load_config(root / CONFIG_NAME)
    ws = Workspace(root=root, config=cfg)
    if root not in _migrated:
        migrate(ws.db)
        _migrated.add(root)
    return ws
