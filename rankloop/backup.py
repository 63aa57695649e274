"""Backing a workspace up while the app serves it, and restoring a backup into a folder.

A backup is itself a workspace folder: `rankloop.duckdb` (a consistent copy, see `store.backup`), `rankloop.toml`,
`runs/` (empty unless asked for) and `backup.json` (when, from where, schema version, row counts, the copy's
sha256). It is built under a temporary name beside DEST and renamed into place only when complete, so DEST is
either absent or a whole backup. A restore checks the copy first (it opens, its schema is one this rankloop
knows, every block reads back, the sha256 matches) and swaps it in with renames, holding the old database's lock.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from rankloop import __version__
from rankloop.config import load_config
from rankloop.workspace import CONFIG_NAME, DB_NAME, Workspace, _migrated, open_workspace
from store.backup import check_database, copy_database
from store.db import WorkspaceBusy, connection, is_encrypted
from store.export import file_sha256

MANIFEST_NAME = "backup.json"


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _empty_or_absent(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def backup_workspace(ws: Workspace, dest: str | Path, with_runs: bool = False, actor: str = "cli") -> dict[str, Any]:
    """Write a consistent backup of `ws` to the folder `dest` (absent or empty); returns its manifest."""
    dest = Path(dest).resolve()
    if dest.is_relative_to(ws.root):
        raise ValueError(f"{dest}: the backup must go outside the workspace {ws.root}")
    if not _empty_or_absent(dest):
        raise FileExistsError(f"{dest}: already exists and is not an empty folder; choose a new backup folder")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"{dest}: the folder {dest.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        counts = copy_database(ws.db, tmp / DB_NAME, actor, label=str(dest))
        shutil.copy2(ws.root / CONFIG_NAME, tmp / CONFIG_NAME)
        if with_runs and ws.runs_dir.is_dir():
            shutil.copytree(ws.runs_dir, tmp / "runs", symlinks=True)
        else:
            (tmp / "runs").mkdir()
        manifest = {
            "created_at": started, "workspace": str(ws.root), "rankloop_version": __version__,
            "schema_version": check_database(tmp / DB_NAME)["schema_version"], "encrypted": is_encrypted(ws.db),
            "with_runs": with_runs, "tables": counts, "database_sha256": file_sha256(tmp / DB_NAME),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_backup(src: str | Path) -> dict[str, Any]:
    """What `restore_workspace` checks before touching anything; returns the database's version and counts."""
    src = Path(src).resolve()
    if not (src / DB_NAME).is_file() or not (src / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{src}: not a rankloop backup (needs {DB_NAME} and {CONFIG_NAME})")
    load_config(src / CONFIG_NAME)
    manifest_file = src / MANIFEST_NAME
    if manifest_file.is_file():
        try:
            want = json.loads(manifest_file.read_text(encoding="utf-8"))["database_sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{manifest_file}: not a valid backup manifest ({e})") from e
        if file_sha256(src / DB_NAME) != want:
            raise ValueError(f"{src / DB_NAME}: its sha256 differs from {MANIFEST_NAME}: the copy was changed or "
                             "damaged")
    return check_database(src / DB_NAME)


def restore_workspace(src: str | Path, target: str | Path, force: bool = False) -> dict[str, Any]:
    """Check the backup `src`, then make `target` a workspace holding it (replacing a non-empty one only with
    `force`). The restored workspace is upgraded to the current schema. Returns the check's result."""
    src, target = Path(src).resolve(), Path(target).resolve()
    if target == src or target.is_relative_to(src) or src.is_relative_to(target):
        raise ValueError(f"{target}: the restore target and the backup {src} must not overlap")
    info = check_backup(src)
    if not _empty_or_absent(target) and not force:
        raise FileExistsError(f"{target}: not empty; pass --force to replace what is there with the backup")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"{target}: the folder {target.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    try:
        shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST_NAME))
        (tmp / "runs").mkdir(exist_ok=True)
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _migrated.discard(target)
    open_workspace(target)  # applies any migrations newer than the backup
    return info


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an existing target is moved aside first, with its database's lock held so that
    no writer is half-way through a transaction on it, then removed."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    held = None
    if (target / DB_NAME).is_file():
        try:
            held = connection(target / DB_NAME)
            held.__enter__()
        except WorkspaceBusy:
            raise
        except (duckdb.Error, ValueError):  # a damaged or foreign file: nobody can be writing it
            held = None
    try:
        os.rename(target, old)
        os.rename(tmp, target)
    finally:
        if held is not None:
            held.__exit__(None, None, None)
    shutil.rmtree(old, ignore_errors=True)
