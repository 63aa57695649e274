"""Backing a workspace up while the app serves it, and restoring a backup into a folder or a PostgreSQL database.

A backup is itself a workspace folder, always on DuckDB whatever the source: `rankloop.duckdb` (a consistent
copy, see `store.backup`), `rankloop.toml` (with `database` cleared: the backup is a DuckDB workspace), `runs/`
(empty unless asked for) and `backup.json` (when, from where, which backend, schema version, row counts, per-table
content hashes, the copy's sha256). It is built under a temporary name beside DEST and renamed into place only
when complete, so DEST is either absent or a whole backup. A restore checks the copy first (it opens, its schema
is one this rankloop knows, every block reads back, the sha256 and the table hashes match) and swaps it in with
renames, holding the old database's lock; or, with a PostgreSQL URL, copies it into that database in one
transaction (`store.backup.restore_postgres`) and makes DIR a workspace on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from rankloop import __version__
from rankloop.config import load_config
from rankloop.workspace import CONFIG_NAME, DB_NAME, Workspace, _migrated, open_workspace
from store.backup import (
    backup_postgres,
    check_database,
    compare_hashes,
    copy_database,
    file_hashes,
    restore_postgres,
)
from store.db import WorkspaceBusy, connection, is_encrypted
from store.dialect import check_url, redacted
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
        if ws.on_postgres:
            copied = backup_postgres(str(ws.db), tmp / DB_NAME, actor, label=str(dest))
            counts, hashes = copied["tables"], copied["hashes"]
            (tmp / CONFIG_NAME).write_text(
                _with_database((ws.root / CONFIG_NAME).read_text(encoding="utf-8"), ""), encoding="utf-8")
        else:
            counts = copy_database(ws.db, tmp / DB_NAME, actor, label=str(dest))
            hashes = file_hashes(tmp / DB_NAME)
            shutil.copy2(ws.root / CONFIG_NAME, tmp / CONFIG_NAME)
        if with_runs and ws.runs_dir.is_dir():
            shutil.copytree(ws.runs_dir, tmp / "runs", symlinks=True)
        else:
            (tmp / "runs").mkdir()
        manifest = {
            "created_at": started, "workspace": str(ws.root), "rankloop_version": __version__,
            "schema_version": check_database(tmp / DB_NAME)["schema_version"], "encrypted": is_encrypted(ws.db),
            "with_runs": with_runs, "tables": counts, "database_sha256": file_sha256(tmp / DB_NAME),
            "backend": "postgresql" if ws.on_postgres else "duckdb",
            "table_sha256": {t: h["sha256"] for t, h in hashes.items()},
        }
        if ws.on_postgres:
            manifest["source_database"] = redacted(ws.db)
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
    want = None
    if manifest_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
            sha = manifest["database_sha256"]
            if "table_sha256" in manifest:
                want = {t: {"rows": manifest["tables"][t], "sha256": h} for t, h in manifest["table_sha256"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{manifest_file}: not a valid backup manifest ({e})") from e
        if file_sha256(src / DB_NAME) != sha:
            raise ValueError(f"{src / DB_NAME}: its sha256 differs from {MANIFEST_NAME}: the copy was changed or "
                             "damaged")
    info = check_database(src / DB_NAME)
    if want is not None:
        compare_hashes(want, file_hashes(src / DB_NAME), str(src / DB_NAME))
    info["table_hashes"] = want
    return info


def _with_database(toml: str, url: str) -> str:
    """The text of a rankloop.toml with [workspace] `database` set to `url` ("" for the DuckDB file); the rest of
    the text (comments, other settings) as it was."""
    lines = toml.splitlines(keepends=True)
    section, done = None, False
    for i, line in enumerate(lines):
        head = re.match(r"\s*\[([^\]]+)\]", line)
        if head:
            if section == "workspace" and not done:
                lines.insert(i, f"database = {json.dumps(url)}\n")
                done = True
                break
            section = head.group(1).strip()
        elif section == "workspace" and re.match(r"\s*database\s*=", line):
            lines[i] = f"database = {json.dumps(url)}\n"
            done = True
    if not done:
        if section == "workspace":
            lines.append(f"database = {json.dumps(url)}\n")
        elif url:
            lines.append(f"\n[workspace]\ndatabase = {json.dumps(url)}\n")
    return "".join(lines)


def restore_workspace(src: str | Path, target: str | Path, force: bool = False,
                      database: str | None = None) -> dict[str, Any]:
    """Check the backup `src`, then make `target` a workspace holding it (replacing a non-empty one only with
    `force`). The restored workspace is upgraded to the current schema. Returns the check's result.

    With `database` (a PostgreSQL URL), the tables go into that database (empty, or migrated and holding no rows;
    one holding rows is emptied only with `force`) in one transaction that also checks counts and table hashes,
    and `target` becomes a workspace whose rankloop.toml names it."""
    src, target = Path(src).resolve(), Path(target).resolve()
    if target == src or target.is_relative_to(src) or src.is_relative_to(target):
        raise ValueError(f"{target}: the restore target and the backup {src} must not overlap")
    if database:
        check_url(database)
    info = check_backup(src)
    if not _empty_or_absent(target) and not force:
        raise FileExistsError(f"{target}: not empty; pass --force to replace what is there with the backup")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"{target}: the folder {target.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    try:
        if database:
            ignore = shutil.ignore_patterns(MANIFEST_NAME, DB_NAME, f"{DB_NAME}.wal")
            shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True, ignore=ignore)
            toml = _with_database((src / CONFIG_NAME).read_text(encoding="utf-8"), database)
            (tmp / CONFIG_NAME).write_text(toml, encoding="utf-8")
            load_config(tmp / CONFIG_NAME)
        else:
            ignore = shutil.ignore_patterns(MANIFEST_NAME)
            shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True, ignore=ignore)
        (tmp / "runs").mkdir(exist_ok=True)
        if database:  # one transaction: a failure leaves the database as it was, and DIR untouched
            done = restore_postgres(src / DB_NAME, database, info.get("table_hashes"), force=force)
            info["sequences"] = done["sequences"]
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
