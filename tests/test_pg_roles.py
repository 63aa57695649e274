"""Team mode on a shared server: the role the app and jobs use needs only DML rights; the schema's owner migrates.

The owner (`rankloop_app` of the throw-away cluster: LOGIN, not a superuser, owns the database) runs `rankloop init
--database` and `rankloop migrate`; a second role with SELECT/INSERT/UPDATE/DELETE on the tables and USAGE on the
sequences (the grants docs/postgresql.md lists) serves reviewers. Servers never migrate: an older schema is refused
with a message naming `rankloop migrate`.
"""

from __future__ import annotations

import pytest

from rankloop.workspace import SchemaBehind, _migrated, init_workspace, migrate_workspace, open_workspace
from store.db import read, transaction
from store.queue import next_item, submit
from store.users import add_user
from tests.test_queue import rank_as_shown, seed_comparisons

ROLE = "rankloop_rw"


@pytest.fixture
def dml_url(pg_cluster, pg_databases):
    """A fresh migrated database and the URL of a role with only the grants an app server needs on it."""
    owner_url = pg_databases.create()
    name = owner_url.rsplit("/", 1)[1]
    exists = pg_cluster.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'")
    if not exists.strip():
        pg_cluster.psql(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
    pg_cluster.psql(
        f"GRANT CONNECT, TEMPORARY ON DATABASE {name} TO {ROLE}",
        f"GRANT USAGE ON SCHEMA public TO {ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ROLE}",
        database=name,
    )
    yield owner_url, owner_url.replace(f"{pg_cluster.role}@", f"{ROLE}@")
    pg_databases.drop(owner_url.replace(f"{pg_cluster.role}@", f"{ROLE}@"))
    pg_databases.drop(owner_url)


def test_a_role_with_only_dml_rights_serves_the_queue(dml_url, tmp_path):
    _, url = dml_url
    ws = init_workspace(tmp_path / "ws", database=url)  # migrated already: no DDL needed, none attempted
    seed_comparisons(ws.db, 2)
    ana = add_user(ws.db, "ana", "reviewer", "password ana", actor="test")
    item = next_item(ws.db, ana)
    jid = submit(ws.db, item.lease_id, ana, "ana", rank_as_shown(item))
    assert read(ws.db, lambda con: con.execute("SELECT id, reviewer_id FROM judgments").fetchall()) == [(jid, ana)]
    with pytest.raises(Exception, match="must be owner of table judgments"):  # and it cannot change the schema
        with transaction(ws.db) as con:
            con.execute("DROP TABLE judgments")
    assert read(ws.db, lambda con: con.execute("SELECT count(*) FROM judgments").fetchone()[0]) == 1


def test_servers_refuse_an_older_schema_and_only_the_owner_migrates_it(dml_url, tmp_path):
    owner, url = dml_url
    app = init_workspace(tmp_path / "app", database=url).root
    with transaction(owner, migration=True) as con:  # as if rankloop were upgraded after this database was made
        con.execute("ALTER TABLE jobs DROP COLUMN runner_host")  # what the newest migration made
        con.execute("DELETE FROM schema_migrations WHERE version = 7")
    _migrated.discard(app)  # what a server process started now sees
    with pytest.raises(SchemaBehind, match="schema version 6, this rankloop needs 7; run `rankloop migrate`"):
        open_workspace(app)
    with pytest.raises(PermissionError, match="m007_job_host needs rights this role lacks.*owns the schema"):
        migrate_workspace(app)
    assert read(owner, lambda con: con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]) == 6
    _, done = migrate_workspace(init_workspace(tmp_path / "owner", database=owner).root)  # init as owner migrates
    assert done == [] and read(owner, lambda con: con.execute("SELECT changes FROM queue_state").fetchone()) == (0,)
    _migrated.discard(app)
    assert open_workspace(app).db == url  # the app role opens it now
