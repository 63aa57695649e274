import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


BOTH_BACKENDS = "both_backends"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{BOTH_BACKENDS}: run each test that uses the `workspace` fixture on a "
                                       "DuckDB file and on a PostgreSQL database (the `backend` parameter)")


def pytest_generate_tests(metafunc):
    """A module or test marked `both_backends` runs once per backend: `backend` is 'duckdb' or 'postgresql'."""
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(BOTH_BACKENDS):
        metafunc.parametrize("backend", ["duckdb", "postgresql"], scope="function")


@pytest.fixture
def backend(request) -> str:
    """'duckdb' unless the test is parametrized by the `both_backends` marker."""
    return getattr(request, "param", "duckdb")


@pytest.fixture
def database(request, backend, tmp_path):
    """What a new workspace's tables live in: None for the DuckDB file, else a fresh PostgreSQL database's URL
    (copied from a migrated template: 30-40 ms), released and dropped after the test."""
    if backend == "duckdb":
        yield None
        return
    databases = request.getfixturevalue("pg_databases")
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def workspace(tmp_path, database):
    """A fresh workspace per test; background jobs a test left running (it failed mid-way) are killed after it."""
    from rankloop.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", database=database)
    yield ws
    _kill_jobs(ws.db)


def _kill_jobs(db) -> None:
    import os
    import signal

    from rankloop.jobs import command_alive, runner_alive
    from store.jobs import list_jobs

    try:
        jobs = [j for j in list_jobs(db) if j.active]
    except Exception:  # the test broke the database on purpose, or never migrated it
        return
    for job in jobs:
        try:
            if runner_alive(job):
                os.killpg(job.runner_pid, signal.SIGKILL)  # the runner leads the group the command runs in
            if command_alive(job):
                os.kill(job.child_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """Folder of a tiny causal LM + tokenizer with a chat template, built once per test session."""
    from tests.tiny import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture
def one_thread():
    """Tiny models are dominated by thread hand-offs: one torch thread is far faster on a shared 2-core machine.
    Modules with tiny-model training use it for every test: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def table_hash(db) -> str:
    """Content hash of every table: shows that a failed command left the workspace exactly as it was."""
    import hashlib

    from store.db import read

    def work(con):
        h = hashlib.sha256()
        tables = con.execute("SELECT table_name FROM information_schema.tables "
                             "WHERE table_schema IN ('main', 'public') ORDER BY 1").fetchall()
        for (name,) in tables:
            rows = con.execute(f'SELECT * FROM "{name}"').fetchall()
            h.update(name.encode())
            for r in sorted(map(repr, rows)):
                h.update(r.encode())
        return h.hexdigest()

    return read(db, work)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throw-away PostgreSQL cluster for the test session (`tests/pg_cluster.py`): started on first use, stopped
    and its folder removed at the end. Skipped only when the PostgreSQL binaries are not installed."""
    from tests.pg_cluster import find_bin_dir, running_cluster

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl/psql on PATH, in $RANKLOOP_PG_BIN or "
                    "/usr/lib/postgresql/*/bin): run scripts/setup dev as root or apt-get install postgresql")
    with running_cluster(bin_dir) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_url(pg_cluster) -> str:
    """postgresql://USER@HOST:PORT/DB of the session's cluster, as its non-superuser app role."""
    return pg_cluster.url


@pytest.fixture(scope="session")
def pg_databases(pg_cluster):
    """Fresh migrated databases for tests (`create()` → URL), dropped in a background thread after each test."""
    from tests.pg_cluster import TestDatabases

    databases = TestDatabases(pg_cluster)
    yield databases
    databases.close()
