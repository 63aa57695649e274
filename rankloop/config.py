"""The workspace config, `rankloop.toml`: one dataclass per section, each field with help text, checked on load."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rl.config import SamplingParams
from training.config import option
from training.models import DEFAULT_POLICY


class ConfigError(ValueError):
    """A bad `rankloop.toml`: names the file, the section and the field."""


@dataclass
class WorkspaceSection:
    required_reviewers: int = field(default=1, metadata={"help": "Distinct reviewers each comparison needs."})
    encrypted: bool = field(default=False, metadata={
        "help": "The database is encrypted (rankloop init --encrypt); its key comes from $RANKLOOP_KEY or "
                "$RANKLOOP_KEY_FILE and is never stored here."})
    database: str = field(default="", metadata={
        "help": "Team mode: the PostgreSQL database (postgresql://USER@HOST:PORT/DBNAME, rankloop init --database); "
                "empty for the DuckDB file rankloop.duckdb. Never a password: libpq reads PGPASSWORD, PGPASSFILE or "
                "~/.pgpass."})

    def __post_init__(self) -> None:
        if self.required_reviewers < 1:
            raise ValueError("required_reviewers: must be >= 1")
        if self.database:
            from store.dialect import check_url

            check_url(self.database)
        if self.database and self.encrypted:
            raise ValueError("encrypted: a PostgreSQL database is not encrypted by rankloop (use TLS and the "
                             "server's disk encryption)")


@dataclass
class ModelsSection:
    policy: str = option(DEFAULT_POLICY, "Model row `generate` samples from by default.")


# [generation]: how `rankloop generate` samples; the fields are rl.config.SamplingParams' (declared once there).
GenerationSection = SamplingParams


@dataclass
class SsoSection:
    provider_url: str = field(default="", metadata={
        "help": "Single sign-on (OpenID Connect, through Streamlit's st.login): the provider's discovery URL "
                "(https://.../.well-known/openid-configuration); empty = name and password only. The client secret "
                "comes from $RANKLOOP_SSO_CLIENT_SECRET and is never stored here."})
    client_id: str = field(default="", metadata={"help": "This app's client id at the provider."})
    redirect_uri: str = field(default="", metadata={
        "help": "This app's callback as registered at the provider: http(s)://HOST:PORT/oauth2callback."})
    account_claim: str = field(default="email", metadata={
        "help": "The identity claim that names the rankloop account (`rankloop users add NAME`): no account, "
                "no access; the account's role applies."})
    button_label: str = field(default="Log in with single sign-on", metadata={"help": "The login page's button."})

    def __post_init__(self) -> None:
        if self.provider_url and not (self.client_id and self.redirect_uri):
            raise ValueError("client_id and redirect_uri: both are needed with provider_url")
        if self.provider_url and not self.redirect_uri.rstrip("/").endswith("/oauth2callback"):
            raise ValueError(f"redirect_uri: must end with /oauth2callback, got {self.redirect_uri!r}")
        if not self.account_claim:
            raise ValueError("account_claim: must name a claim, e.g. 'email'")


SECTIONS: dict[str, type] = {"workspace": WorkspaceSection, "models": ModelsSection, "generation": GenerationSection,
                             "sso": SsoSection}


@dataclass
class Config:
    workspace: WorkspaceSection = field(default_factory=WorkspaceSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    sso: SsoSection = field(default_factory=SsoSection)
    extra: dict[str, Any] = field(default_factory=dict)  # the trainers' and the loop's sections ([reward], ...)

    def to_dict(self) -> dict[str, Any]:
        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        out.update(self.extra)
        return out


def _section(path: Path, name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: [{name}] {key}: unknown field (known: {', '.join(known)})")
        want = type(known[key].default)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{path}: [{name}] {key}: expected {want.__name__}, got {type(value).__name__}")
    try:
        return cls(**raw)
    except ValueError as e:
        raise ConfigError(f"{path}: [{name}] {e}") from e


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: not found") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    cfg = Config()
    for name, cls in SECTIONS.items():
        if name in raw:
            setattr(cfg, name, _section(path, name, cls, raw.pop(name)))
    cfg.extra = raw
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def render_config(cfg: Config) -> str:
    """The TOML text of `cfg`, each field preceded by its help as a comment."""
    lines = ["# rankloop workspace settings. Each field's help is above it.", ""]
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        section = getattr(cfg, name)
        for f in fields(cls):
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)
