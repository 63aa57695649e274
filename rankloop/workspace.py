"""A workspace folder: `rankloop.toml`, `rankloop.duckdb` and `runs/`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rankloop.config import Config, load_config, render_config
from store.db import KEY_FILE_ENV, EncryptionError, attach_encrypted, encryption_key, is_encrypted, read
from store.dialect import check_url, redacted
from store.migrations import SCHEMA_VERSION, migrate, schema_version

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
    def db(self) -> Path | str:
        """The DuckDB file, or the PostgreSQL URL of a team-mode workspace (a `str`: see store.dialect)."""
        return self.config.workspace.database or self.root / DB_NAME

    @property
    def on_postgres(self) -> bool:
        return bool(self.config.workspace.database)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"


_migrated: set[Path] = set()


def _check_key_outside(root: Path) -> None:
    """The key file must not live in the workspace: a copy of the folder would carry its own key."""
    raw = os.environ.get(KEY_FILE_ENV)
    if raw and Path(raw).resolve().is_relative_to(root):
        raise EncryptionError(f"{KEY_FILE_ENV}={raw}: the key file is inside the workspace {root}; keep it elsewhere")


def init_workspace(root: str | Path, config: Config | None = None, encrypt: bool = False,
                   database: str | None = None) -> Workspace:
    """Create (or complete) a workspace; an existing config is kept, the schema brought up to date.

    With `encrypt`, a new database is created encrypted with the key from $RANKLOOP_KEY or $RANKLOOP_KEY_FILE.
    With `database` (a PostgreSQL URL), the workspace's tables live there (team mode); the URL is recorded in
    rankloop.toml and the database migrated by the role it names.
    """
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: exists and is not a folder")
    if database:
        check_url(database)
        if encrypt:
            raise EncryptionError("--encrypt: a PostgreSQL database is not encrypted by rankloop; use TLS "
                                  "(sslmode in the URL) and the server's disk encryption")
        cfg_path = root / CONFIG_NAME
        if cfg_path.is_file():
            recorded = load_config(cfg_path).workspace.database
            if recorded != database:
                raise ValueError(f"{cfg_path}: already a workspace on {redacted(recorded) or root / DB_NAME}; "
                                 f"not changing it to {redacted(database)} (move data with rankloop backup/restore)")
        config = config or Config()
        config.workspace.database = database
        root.mkdir(parents=True, exist_ok=True)
        (root / "runs").mkdir(exist_ok=True)
        migrate(database)
        if not cfg_path.exists():
            cfg_path.write_text(render_config(config), encoding="utf-8")
        return open_workspace(root)
    db = root / DB_NAME
    if encrypt:
        _check_key_outside(root)
        key = encryption_key(required_for=db)
        if db.exists() and not is_encrypted(db):
            raise EncryptionError(f"{db}: already exists unencrypted; `rankloop init --encrypt` only makes new ones")
    root.mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    if encrypt and not db.exists():
        attach_encrypted(db, key).close()  # type: ignore[arg-type]
    cfg_path = root / CONFIG_NAME
    if not cfg_path.exists():
        cfg = config or Config()
        cfg.workspace.encrypted = encrypt or cfg.workspace.encrypted
        cfg_path.write_text(render_config(cfg), encoding="utf-8")
    return open_workspace(root)


class SchemaBehind(RuntimeError):
    """A PostgreSQL workspace whose schema is older (or newer) than this rankloop: migrate it first."""


def check_schema(ws: Workspace) -> None:
    """On PostgreSQL the app and jobs never migrate (their role needs no DDL rights): they check the version."""
    have = read(ws.db, schema_version)
    if have != SCHEMA_VERSION:
        what = "run `rankloop migrate` (as the role that owns the schema)" if have < SCHEMA_VERSION else \
            "upgrade rankloop"
        raise SchemaBehind(f"{redacted(ws.db)}: schema version {have}, this rankloop needs {SCHEMA_VERSION}; {what}")


def migrate_workspace(root: str | Path) -> tuple[Workspace, list[str]]:
    """Apply the pending migrations of the workspace at `root` (either backend); return it and what was applied."""
    root = Path(root).resolve()
    if not (root / CONFIG_NAME).is_file():
        raise NotAWorkspace(f"{root}: not a rankloop workspace (no {CONFIG_NAME})")
    ws = Workspace(root=root, config=load_config(root / CONFIG_NAME))
    done = migrate(ws.db)
    _migrated.add(root)
    return open_workspace(root), done


def open_workspace(root: str | Path) -> Workspace:
    """Open an existing workspace, applying any pending schema migrations once per process."""
    root = Path(root).resolve()
    if not (root / CONFIG_NAME).is_file():
        raise NotAWorkspace(
            f"{root}: not a rankloop workspace (no {CONFIG_NAME}); create one with `rankloop init DIR`"
        )
    cfg = load_config(root / CONFIG_NAME)
    ws = Workspace(root=root, config=cfg)
    if ws.on_postgres:
        if root not in _migrated:
            check_schema(ws)
            _migrated.add(root)
        return ws
    if cfg.workspace.encrypted or is_encrypted(ws.db):
        _check_key_outside(root)
        encryption_key(required_for=ws.db)
        if ws.db.exists() and not is_encrypted(ws.db):
            raise EncryptionError(f"{ws.db}: {CONFIG_NAME} says the database is encrypted, but it is not")
    if root not in _migrated:
        migrate(ws.db)
        _migrated.add(root)
    return ws
