"""The workspace as the library sees it: a folder with its database file and its runs folder.

`rankloop.workspace.Workspace` (the top floor: it also carries the parsed `rankloop.toml`) is one; so is anything
with these three paths, such as a test's stand-in. Typed here, on the ground floor, so that `training/`, `reward/`
and `rl/` can name the type without importing upwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class WorkspaceLike(Protocol):
    @property
    def root(self) -> Path:
        """The workspace folder."""
        ...

    @property
    def db(self) -> Path:
        """The database file (`rankloop.duckdb`)."""
        ...

    @property
    def runs_dir(self) -> Path:
        """Where runs keep their folders (`runs/`)."""
        ...
