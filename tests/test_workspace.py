"""Workspace folders, the config file and the schema migrations."""

import duckdb
import pytest

from rankloop.config import ConfigError, load_config
from rankloop.workspace import NotAWorkspace, init_workspace, open_workspace
from store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate


def _versions(db):
    con = duckdb.connect(str(db))
    try:
        return [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()]
    finally:
        con.close()


def test_init_writes_config_database_and_runs_folder(tmp_path):
    ws = init_workspace(tmp_path / "w")
    assert (ws.root / "rankloop.toml").is_file()
    assert ws.db.is_file()
    assert ws.runs_dir.is_dir()
    assert _versions(ws.db) == list(range(1, SCHEMA_VERSION + 1))
    assert ws.config.generation.k == 4


def test_migrating_again_is_a_no_op(workspace):
    assert migrate(workspace.db) == []
    assert _versions(workspace.db) == list(range(1, SCHEMA_VERSION + 1))


def test_an_old_file_upgrades_and_keeps_its_rows(tmp_path):
    db = tmp_path / "old.duckdb"
    assert migrate(db, upto=1) == [MIGRATIONS[0].__name__]
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO prompts (id, messages, content_hash, source) VALUES (1, '[]', 'h', 'old')")
    con.close()
    applied = migrate(db)
    assert applied == [m.__name__ for m in MIGRATIONS[1:]]
    con = duckdb.connect(str(db))
    assert con.execute("SELECT source FROM prompts").fetchall() == [("old",)]
    assert con.execute("SELECT count(*) FROM response_scores").fetchone() == (0,)


def test_init_keeps_an_existing_config(tmp_path):
    ws = init_workspace(tmp_path / "w")
    text = (ws.root / "rankloop.toml").read_text().replace("k = 4", "k = 3")
    (ws.root / "rankloop.toml").write_text(text)
    assert init_workspace(tmp_path / "w").config.generation.k == 3


def test_opening_a_folder_that_is_not_a_workspace_says_so(tmp_path):
    with pytest.raises(NotAWorkspace, match="not a rankloop workspace.*rankloop init"):
        open_workspace(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[generation]\nk = 'four'\n", r"\[generation\] k: expected int, got str"),
        ("[generation]\nk = 1\n", r"\[generation\] k: must be between 2 and 16"),
        ("[generation]\ntemprature = 0.5\n", r"\[generation\] temprature: unknown field"),
        ("[workspace]\nrequired_reviewers = 0\n", r"required_reviewers: must be >= 1"),
        ("[generation\n", "not valid TOML"),
        ("generation = 3\n", r"\[generation\] must be a table"),
    ],
)
def test_a_bad_config_names_the_file_section_and_field(tmp_path, text, message):
    path = tmp_path / "rankloop.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(path)
    assert str(path) in str(e.value)
