"""`rankloop backup` / `rankloop restore` between DuckDB and PostgreSQL (docs/postgresql.md, section 7): a real
DuckDB file and a real PostgreSQL database from the session's throw-away cluster. A backup is always a DuckDB
folder; the tables, ids and lineage survive DuckDB -> PostgreSQL -> DuckDB with equal per-table content hashes,
sequences go on after the highest id on both, a PostgreSQL backup is one snapshot while another thread writes, and a
refused or failed restore leaves the database as it was."""

import json
import threading
import time

import duckdb
import pytest
from click.testing import CliRunner

import store.backup as store_backup
from rankloop.cli import main
from rankloop.config import load_config
from rankloop.workspace import init_workspace, open_workspace
from store.backup import database_hashes, file_hashes
from store.db import read, release, write
from tests.test_backup import _seeded

TRICKY = ['plain', 'a "quoted", comma', "back\\slash {brace}", "tab\there\nnewline", "ünïcødé ✓", "NULL", ""]


def _more_rows(db):
    """Rows in the tables the store's portable functions do not reach yet, with the values COPY and the hashes must
    carry exactly: tricky text, arrays of it, JSON with spacing, doubles, NULLs, microsecond timestamps."""
    def work(con):
        con.execute("INSERT INTO prompts (id, text, messages, content_hash, source, tags, created_at) VALUES "
                    "(nextval('prompts_id'), ?, ?, 'tricky-hash', 'test', ?, TIMESTAMP '2024-02-29 23:59:59.123456')",
                    [TRICKY[3], '{"role":  "user" , "content": "x\\u00e9"}', TRICKY])
        con.execute("INSERT INTO response_scores (response_id, model_id, score) VALUES (1, 7, ?), (2, 7, ?)",
                    [0.1 + 0.2, -1e-300])
        con.execute("INSERT INTO settings (key, value, updated_by) VALUES ('queue', ?, 'test')",
                    ['{"b": 1,   "a": [1, 2.50, null]}'])
        con.execute("INSERT INTO gold_answers (comparison_id, ranking, all_bad, note, created_by) "
                    "VALUES (1, '[[1], [2]]', false, ?, 'test')", [TRICKY[1]])
        con.execute("INSERT INTO models (id, name, kind, metrics) VALUES (nextval('models_id'), 'rm', 'reward', ?)",
                    ['{"acc": 0.75}'])
        for _ in range(3):  # ids handed out and never used: the sequence must go on after them too
            con.execute("SELECT nextval('runs_id')").fetchone()
    write(db, work)


def _ids(db, table):
    return read(db, lambda con: [r[0] for r in con.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()])


def _next(db, sequence):
    return write(db, lambda con: con.execute(f"SELECT nextval('{sequence}')").fetchone()[0])


def _backup(ws_root, dest):
    r = CliRunner().invoke(main, ["backup", str(dest), "-w", str(ws_root)])
    assert r.exit_code == 0, r.output
    return json.loads((dest / "backup.json").read_text())


@pytest.fixture
def pg_url(pg_databases):
    url = pg_databases.create()  # freshly migrated, as an operator's `rankloop migrate` leaves it
    yield url
    pg_databases.drop(url)


def test_duckdb_to_postgres_to_duckdb_keeps_every_table_and_id(workspace, tmp_path, pg_url):
    ws = _seeded(workspace)
    _more_rows(ws.db)
    duck_hashes = database_hashes(ws.db)
    bk1 = tmp_path / "bk1"
    m1 = _backup(ws.root, bk1)
    assert m1["backend"] == "duckdb" and "source_database" not in m1
    assert set(m1["table_sha256"]) == set(m1["tables"]) and len(m1["tables"]) == 16  # 15 + queue_state

    started = time.monotonic()
    r = CliRunner().invoke(main, ["restore", str(bk1), str(tmp_path / "team"), "--database", pg_url])
    assert r.exit_code == 0, r.output
    restore_s = time.monotonic() - started
    team = open_workspace(tmp_path / "team")
    assert team.db == pg_url and load_config(tmp_path / "team" / "rankloop.toml").workspace.database == pg_url
    assert not (tmp_path / "team" / "rankloop.duckdb").exists()
    pg_hashes = database_hashes(pg_url)
    assert pg_hashes == database_hashes(bk1 / "rankloop.duckdb")
    for table in ("prompts", "comparisons", "judgments", "reviewers", "audit_log"):
        assert _ids(pg_url, table) == _ids(bk1 / "rankloop.duckdb", table), table
    # The sequences go on after the highest id (and after ids handed out but never used: runs).
    assert _next(pg_url, "judgments_id") == max(_ids(pg_url, "judgments")) + 1
    assert _next(pg_url, "comparisons_id") == max(_ids(pg_url, "comparisons")) + 1
    assert _next(pg_url, "runs_id") == 4
    # Servers' queue caches rebuild: the change counter moved past the target's (0 in a fresh database).
    assert read(pg_url, lambda con: con.execute("SELECT changes FROM queue_state").fetchone()[0]) >= 1

    bk2 = tmp_path / "bk2"
    started = time.monotonic()
    m2 = _backup(tmp_path / "team", bk2)
    backup_s = time.monotonic() - started
    assert m2["backend"] == "postgresql" and m2["source_database"] == pg_url and not m2["encrypted"]
    assert load_config(bk2 / "rankloop.toml").workspace.database == ""  # a backup is a DuckDB workspace
    assert database_hashes(bk2 / "rankloop.duckdb") == database_hashes(pg_url)  # nothing wrote meanwhile
    # Against the first backup, only the second backup's own audit event differs.
    h1, h2 = database_hashes(bk1 / "rankloop.duckdb"), database_hashes(bk2 / "rankloop.duckdb")
    assert {t: h for t, h in h2.items() if t != "audit_log"} == {t: h for t, h in h1.items() if t != "audit_log"}
    assert h2["audit_log"]["rows"] == h1["audit_log"]["rows"] + 1
    assert {t: h for t, h in h1.items() if t != "audit_log"} == {t: h for t, h in duck_hashes.items()
                                                                if t != "audit_log"}

    r = CliRunner().invoke(main, ["restore", str(bk2), str(tmp_path / "back")])
    assert r.exit_code == 0, r.output
    back = open_workspace(tmp_path / "back")
    assert back.db == tmp_path / "back" / "rankloop.duckdb"
    assert database_hashes(back.db) == h2
    for table in ("prompts", "comparisons", "judgments", "reviewers", "audit_log"):
        assert _ids(back.db, table) == _ids(pg_url, table), table
    con = duckdb.connect(str(back.db), read_only=True)
    try:
        row = con.execute("SELECT text, messages, tags, created_at FROM prompts WHERE source = 'test'").fetchone()
    finally:
        con.close()
    assert row[0] == TRICKY[3] and row[1] == '{"role":  "user" , "content": "x\\u00e9"}' and row[2] == TRICKY
    assert row[3].isoformat() == "2024-02-29T23:59:59.123456"
    # Sequences of the DuckDB copy go on after the highest ids too (PostgreSQL handed out one judgment id above).
    from store.judgments import NewJudgment, add_judgment

    comparison = _ids(back.db, "comparisons")[0]
    jid = add_judgment(back.db, NewJudgment(comparison_id=comparison, reviewer="rita", all_bad=True,
                                            idempotency_key="after-restore"))
    assert jid == max(_ids(pg_url, "judgments")) + 2
    assert _next(back.db, "comparisons_id") == max(_ids(back.db, "comparisons")) + 2
    assert _next(back.db, "runs_id") == 5  # 4 was handed out on PostgreSQL before its backup
    print(f"\nround trip: restore into PostgreSQL {restore_s:.2f} s, backup from it {backup_s:.2f} s")


def test_store_writes_on_the_restored_postgres_workspace_continue_the_ids(workspace, tmp_path, pg_url):
    """A judgment written by the store after the restore gets the next id on PostgreSQL (the store's own SQL)."""
    from store.judgments import NewJudgment, add_judgment

    ws = _seeded(workspace)
    _backup(ws.root, tmp_path / "bk")
    r = CliRunner().invoke(main, ["restore", str(tmp_path / "bk"), str(tmp_path / "team"), "--database", pg_url])
    assert r.exit_code == 0, r.output
    comparison = _ids(pg_url, "comparisons")[-1]
    jid = add_judgment(pg_url, NewJudgment(comparison_id=comparison, reviewer="rita", all_bad=True,
                                           idempotency_key="on-postgres"))
    assert jid == max(_ids(ws.db, "judgments")) + 1


def _pg_workspace(tmp_path, url):
    return init_workspace(tmp_path / "team", database=url)


def test_a_postgres_backup_is_one_snapshot_while_another_thread_writes(tmp_path, pg_url):
    """Each writer transaction adds one audit event and one score: a consistent copy has as many of each."""
    from store.audit import log_event

    ws = _pg_workspace(tmp_path, pg_url)
    write(pg_url, lambda con: con.execute(
        "INSERT INTO response_scores (response_id, model_id, score) SELECT g, 0, g / 7.0 "
        "FROM generate_series(1, 30000) AS s(g)"))
    done = threading.Event()
    written = [0]

    def writer():
        i = 0
        while not done.is_set():
            i += 1

            def work(con, i=i):
                log_event(con, "writer", "test.write", {"i": i})
                con.execute("INSERT INTO response_scores (response_id, model_id, score) VALUES (?, 1, 0.5)", [i])
            write(pg_url, work)
            written[0] = i

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while written[0] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = written[0]
        manifest = _backup(ws.root, tmp_path / "bk")
        after = written[0]
    finally:
        done.set()
        thread.join(timeout=60)
    assert after > before, "the writer did not write during the backup"
    con = duckdb.connect(str(tmp_path / "bk" / "rankloop.duckdb"), read_only=True)
    try:
        events = con.execute("SELECT count(*) FROM audit_log WHERE action = 'test.write'").fetchone()[0]
        scores = con.execute("SELECT count(*) FROM response_scores WHERE model_id = 1").fetchone()[0]
        changes = con.execute("SELECT changes FROM queue_state").fetchone()[0]
    finally:
        con.close()
    assert events == scores and before <= scores <= after
    assert manifest["tables"]["response_scores"] == 30000 + scores
    assert changes == 0  # PostgreSQL's change counter means nothing in a DuckDB file
    # The backup's sequences go on after what PostgreSQL handed out.
    pg_next = _next(pg_url, "audit_log_id")
    assert _next(tmp_path / "bk" / "rankloop.duckdb", "audit_log_id") > max(_ids(tmp_path / "bk" / "rankloop.duckdb",
                                                                               "audit_log"))
    assert pg_next > max(_ids(tmp_path / "bk" / "rankloop.duckdb", "audit_log"))


def test_restore_refuses_a_database_holding_rows_and_a_failure_leaves_it_as_it_was(workspace, tmp_path, pg_url,
                                                                                    monkeypatch):
    ws = _seeded(workspace)
    _backup(ws.root, tmp_path / "bk")
    runner = CliRunner()
    assert runner.invoke(main, ["restore", str(tmp_path / "bk"), str(tmp_path / "one"), "--database", pg_url]
                         ).exit_code == 0
    write(ws.db, lambda con: con.execute("DELETE FROM judgments WHERE idempotency_key = 'k0'"))
    _backup(ws.root, tmp_path / "bk2")
    before = database_hashes(pg_url)

    r = runner.invoke(main, ["restore", str(tmp_path / "bk2"), str(tmp_path / "two"), "--database", pg_url])
    assert r.exit_code == 1 and "not empty (" in r.output and "judgments: 5" in r.output, r.output
    assert pg_url.rsplit("/", 1)[1] in r.output
    assert database_hashes(pg_url) == before and not (tmp_path / "two").exists()

    r = runner.invoke(main, ["restore", str(tmp_path / "nowhere"), str(tmp_path / "two"), "--database", pg_url])
    assert r.exit_code == 1 and "nowhere: not a rankloop backup" in r.output, r.output
    assert database_hashes(pg_url) == before

    copied = []
    real = store_backup._copy_to_pg

    def failing(duck, pg, table):
        if len(copied) == 5:
            raise ValueError(f"{table}: disk full (a test)")
        copied.append(table)
        real(duck, pg, table)
    monkeypatch.setattr(store_backup, "_copy_to_pg", failing)
    r = runner.invoke(main, ["restore", str(tmp_path / "bk2"), str(tmp_path / "two"), "--database", pg_url, "--force"])
    assert r.exit_code == 1 and "disk full" in r.output, r.output
    assert database_hashes(pg_url) == before and not (tmp_path / "two").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".two")]
    monkeypatch.undo()

    r = runner.invoke(main, ["restore", str(tmp_path / "bk2"), str(tmp_path / "two"), "--database", pg_url, "--force"])
    assert r.exit_code == 0, r.output
    assert database_hashes(pg_url) == database_hashes(tmp_path / "bk2" / "rankloop.duckdb")
    release(pg_url)


def test_restore_into_postgres_refuses_a_url_with_a_password(workspace, tmp_path):
    ws = _seeded(workspace)
    _backup(ws.root, tmp_path / "bk")
    r = CliRunner().invoke(main, ["restore", str(tmp_path / "bk"), str(tmp_path / "t"), "--database",
                                  "postgresql://u:secret@localhost:5432/db"])
    assert r.exit_code == 1 and "holds a password" in r.output and "secret" not in r.output
    assert not (tmp_path / "t").exists()


def _old_backup(folder):
    """A backup folder as an older rankloop (schema version 5, no backup.json) left it."""
    from rankloop.config import Config, render_config
    from store.migrations import migrate

    folder.mkdir()
    migrate(folder / "rankloop.duckdb", upto=5)
    write(folder / "rankloop.duckdb", lambda con: con.execute(
        "INSERT INTO audit_log (id, actor, action, details) VALUES (nextval('audit_log_id'), 'old', 'x', '{}')"))
    (folder / "rankloop.toml").write_text(render_config(Config()), encoding="utf-8")
    return folder


def test_an_older_backup_goes_into_an_empty_database_and_is_migrated_there(tmp_path, pg_databases, pg_url):
    from store.migrations import SCHEMA_VERSION

    bk = _old_backup(tmp_path / "old")
    r = CliRunner().invoke(main, ["restore", str(bk), str(tmp_path / "a"), "--database", pg_url])
    assert r.exit_code == 1 and f"schema version {SCHEMA_VERSION}, the backup at 5" in r.output, r.output  # migrated

    name = f"{pg_url.rsplit('/', 1)[1]}_empty"
    pg_databases._admin.execute(f"CREATE DATABASE {name} OWNER {pg_databases.cluster.role}")
    empty = pg_databases.url_of(name)
    try:
        r = CliRunner().invoke(main, ["restore", str(bk), str(tmp_path / "b"), "--database", empty])
        assert r.exit_code == 0, r.output
        assert open_workspace(tmp_path / "b").db == empty  # the schema check passes: migrated to the current version
        have, want = database_hashes(empty), file_hashes(bk / "rankloop.duckdb")
        assert read(empty, lambda con: con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]) \
            == SCHEMA_VERSION
        later = ("schema_migrations", "queue_state", "jobs")  # made or changed by migrations 6 and 7
        assert {t: h for t, h in have.items() if t not in later} == {t: h for t, h in want.items() if t not in later}
        assert _next(empty, "audit_log_id") == 2
    finally:
        pg_databases.drop(empty)
