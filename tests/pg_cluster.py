"""A throw-away PostgreSQL cluster for tests: `initdb` into a temporary folder, `pg_ctl start` on a free local port,
a database owned by a role that is not a superuser, and at the end `pg_ctl stop` and the folder removed.

Used by the session fixtures `pg_cluster` / `pg_url` in `tests/conftest.py`; also runnable on its own to time a
start and stop: `.venv/bin/python -m tests.pg_cluster`.

Where the binaries come from: $RANKLOOP_PG_BIN (a folder with initdb, pg_ctl, psql), else the folder of `pg_ctl`
on $PATH when `initdb` sits beside it, else the newest Debian `/usr/lib/postgresql/<version>/bin`
(`apt-get install postgresql`, which `scripts/setup dev` does). `find_bin_dir()` is None when none is found: the
fixture then skips, and only then.

initdb and the server refuse to run as root. As root (CI containers, this machine) the cluster runs as an
unprivileged system user: $RANKLOOP_PG_USER when set, else `postgres` (Debian's package creates it), else
`rankloop-pg`, created with `useradd --system` when missing. The process switches user itself (subprocess's
`user`/`group`/`extra_groups`: no sudo, runuser or setpriv needed), and the temporary folder is made under /tmp
(not pytest's 0700 root-owned base) and handed to that user. As any other user the cluster runs as that user.

The server listens on 127.0.0.1 only, and on a unix socket in the temporary folder; authentication is `trust`
(a throw-away cluster that lives for one test session; no password ever appears in a URL). Durability settings are
off (fsync, synchronous_commit, full_page_writes): the tests check behaviour, not crash safety of PostgreSQL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN_ENV = "RANKLOOP_PG_BIN"
USER_ENV = "RANKLOOP_PG_USER"
FALLBACK_USER = "rankloop-pg"
SUPERUSER = "postgres"  # the cluster's bootstrap superuser (initdb -U); the tests connect as APP_ROLE
APP_ROLE = "rankloop_app"
DATABASE = "rankloop"
_NEEDED = ("initdb", "pg_ctl", "psql")
_START_TIMEOUT_S = 60


def _has_binaries(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in _NEEDED)


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", folder.parent.name)) or (0,)


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and psql, or None when PostgreSQL is not installed (see the module doc)."""
    env = os.environ.get(BIN_ENV)
    if env:
        return Path(env) if _has_binaries(Path(env)) else None
    on_path = shutil.which("pg_ctl")
    if on_path:
        folder = Path(on_path).resolve().parent  # /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl
        if _has_binaries(folder):
            return folder
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for folder in debian:
        if _has_binaries(folder):
            return folder
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at this instant (the start retries on another one if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Who runs initdb and the server: None (this process's user) unless running as root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(USER_ENV)
    candidates = [name] if name else [SUPERUSER, FALLBACK_USER]
    for candidate in candidates:
        try:
            return pwd.getpwnam(candidate)
        except KeyError:
            continue
    name = name or FALLBACK_USER
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
         name],
        capture_output=True, text=True,
    )
    try:
        return pwd.getpwnam(name)  # also when another process created it at the same moment
    except KeyError:
        raise RuntimeError(
            f"initdb refuses to run as root and there is no user {name!r} to run it as; useradd said: "
            f"{result.stderr.strip() or result.returncode}. Set {USER_ENV} to an existing unprivileged user."
        ) from None


@dataclass
class PgCluster:
    """One running cluster; `url` is what a store would be given: postgresql://APP_ROLE@127.0.0.1:PORT/DATABASE."""

    bin_dir: Path
    folder: Path
    port: int
    user: pwd.struct_passwd | None
    host: str = "127.0.0.1"
    role: str = APP_ROLE
    database: str = DATABASE
    timings: dict[str, float] = field(default_factory=dict)
    _stopped: bool = False

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "sock"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}@{self.host}:{self.port}/{self.database}"

    @property
    def superuser_url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    def postmaster_pid(self) -> int | None:
        """The server's PID from postmaster.pid (first line); None once it has stopped."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    # --- running the binaries as the server's user ------------------------------------------------------------

    def _run(self, *args: str, timeout: float = _START_TIMEOUT_S, as_server: bool = True) -> str:
        kwargs = {}
        if as_server and self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGHOST/PGPORT/...
        env.update(LC_ALL="C", TZ="UTC")
        if self.user is not None and as_server:
            env.update(HOME=str(self.folder), USER=self.user.pw_name, LOGNAME=self.user.pw_name)
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]], cwd=self.folder, env=env, timeout=timeout,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stdout.strip()}{self._log_tail()}")
        return result.stdout

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + "\n".join(self.log_file.read_text().splitlines()[-20:])
        except OSError:
            return ""

    # --- life -------------------------------------------------------------------------------------------------

    def init(self) -> None:
        t = time.perf_counter()
        self.socket_dir.mkdir()
        if self.user is not None:
            for p in (self.folder, self.socket_dir):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--no-locale", "--no-sync", "--no-instructions")
        self.timings["initdb_s"] = time.perf_counter() - t

    def start(self) -> None:
        t = time.perf_counter()
        options = " ".join([
            f"-p {self.port}", f"-k {self.socket_dir}", f"-c listen_addresses={self.host}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=100", "-c shared_buffers=32MB", "-c max_wal_size=256MB",
        ])
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(_START_TIMEOUT_S),
                  "-o", options, "start")
        self.timings["start_s"] = time.perf_counter() - t

    def create_app_database(self) -> None:
        """The app's role (LOGIN, not a superuser, cannot create roles or databases) owning the test database."""
        t = time.perf_counter()
        self.psql(
            f"CREATE ROLE {self.role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION",
            f"CREATE DATABASE {self.database} OWNER {self.role}",
        )
        self.timings["create_db_s"] = time.perf_counter() - t

    def psql(self, *statements: str, database: str = "postgres") -> str:
        """Run statements as the superuser (each its own transaction); their output, unaligned and tuples only."""
        args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
                "-U", SUPERUSER, "-d", database]
        for s in statements:
            args += ["-c", s]
        return self._run(*args, as_server=False)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`; when that fails, SIGQUIT to the postmaster's own PID; then remove the folder."""
        if self._stopped:
            return
        self._stopped = True
        t = time.perf_counter()
        pid = self.postmaster_pid()
        try:
            if pid is not None:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            _kill_and_wait(pid)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.timings["stop_s"] = time.perf_counter() - t


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child that exited) still answers kill(0): look at /proc.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_and_wait(pid: int | None, timeout_s: float = 10.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster and its children
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_cluster(bin_dir: Path | None = None, attempts: int = 3) -> Iterator[PgCluster]:
    """Start a cluster (binaries from `find_bin_dir()` unless given), yield it, stop it and remove its folder.

    Also stopped at interpreter exit if the block is never left (atexit), so an interrupted session leaves no
    server behind unless the process is SIGKILLed."""
    bin_dir = bin_dir or find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl, psql) not found")
    user = _server_user()
    cluster: PgCluster | None = None
    for attempt in range(attempts):
        folder = Path(tempfile.mkdtemp(prefix="rankloop-pg-", dir="/tmp" if user is not None else None))
        cluster = PgCluster(bin_dir=bin_dir, folder=folder, port=free_port(), user=user)
        atexit.register(cluster.stop)
        try:
            cluster.init()
            cluster.start()
            break
        except RuntimeError as e:
            cluster.stop()
            atexit.unregister(cluster.stop)
            port_taken = "could not bind" in str(e) or "Address already in use" in str(e)
            if not port_taken or attempt == attempts - 1:
                raise
    assert cluster is not None
    try:
        cluster.create_app_database()
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


def main() -> None:
    """Start, connect once as the app role, stop: print the timings (used for docs/postgresql.md)."""
    t = time.perf_counter()
    with running_cluster() as cluster:
        print(cluster.url, "postmaster", cluster.postmaster_pid(), "folder", cluster.folder)
        print(cluster.psql("SELECT version()").strip())
    total = time.perf_counter() - t
    print({k: round(v, 3) for k, v in cluster.timings.items()}, "total_s", round(total, 3),
          "folder gone", not cluster.folder.exists())


if __name__ == "__main__":
    main()


class TestDatabases:
    """Fresh databases for tests on one cluster: each a copy of a template migrated once (CREATE DATABASE ...
    TEMPLATE, 30-40 ms against 145 ms for a new DuckDB workspace), owned by the app role; a test's database is
    dropped by a background thread after the test, so dropping (about 0.1 s) is not on the test's clock."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    TEMPLATE = "rankloop_template"

    def __init__(self, cluster: PgCluster) -> None:
        import itertools
        import queue
        import threading

        import psycopg

        from store.db import release
        from store.migrations import migrate

        self.cluster = cluster
        self._admin = psycopg.connect(cluster.superuser_url, autocommit=True)
        self._admin.execute(f"CREATE DATABASE {self.TEMPLATE} OWNER {cluster.role}")
        template_url = self.url_of(self.TEMPLATE)
        migrate(template_url)
        release(template_url)  # a template must have no connections when it is copied
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_loop, name="pg-test-db-dropper", daemon=True)
        self._dropper.start()

    def url_of(self, name: str) -> str:
        c = self.cluster
        return f"postgresql://{c.role}@{c.host}:{c.port}/{name}"

    def create(self) -> str:
        with self._lock:
            name = f"rankloop_test_{os.getpid()}_{next(self._names)}"
            self._admin.execute(f"CREATE DATABASE {name} TEMPLATE {self.TEMPLATE} OWNER {self.cluster.role}")
        return self.url_of(name)

    def drop(self, url: str) -> None:
        from store.db import release

        release(url)
        self._drops.put(url.rsplit("/", 1)[1])

    def _drop_loop(self) -> None:
        import psycopg

        con = psycopg.connect(self.cluster.superuser_url, autocommit=True)
        while (name := self._drops.get()) is not None:
            try:
                con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except psycopg.Error:
                pass  # the cluster goes at the session's end anyway
        con.close()

    def close(self) -> None:
        self._drops.put(None)
        self._dropper.join(timeout=60)
        self._admin.close()
