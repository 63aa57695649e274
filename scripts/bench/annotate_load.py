"""Reviewers under load: N = 1, 5, 20 sessions over Streamlit's websocket, with and without a pause, against
Label Studio 1.23 driven the same way, in one run.

rankloop: a workspace with 100k judgments already stored (scripts/bench/annotate_latency.py's seed) and fresh
two-answer comparisons, one account per session, a real `rankloop serve`. Each session speaks the app's own
websocket protocol (scripts/app_client.py): press "A better" (a key: a script run that writes nothing but the
draft) and Submit (the submit + lease-next transaction, acknowledged by the "(judgment N)" toast), timed from the
message sent to the end of the script run it triggered.

Label Studio: installed by this script into its own virtualenv under ~/.cache/rankloop-bench/labelstudio (never a
rankloop dependency), started on its default SQLite with one user per session and the same number of fresh
two-choice tasks; each session loops `GET /api/projects/{id}/next` + `POST /api/tasks/{id}/annotations`. Label
Studio has no server round trip for a key press, so only its submit (annotation + next task) is compared.

Modes: "no pause" (each session acts as soon as the previous answer arrived: a stress test) and "paused" (each
session waits a random 1-3 s, 2 s on average, before each action, as a person would). Printed per mode and N:
p50/p95 of a key and of a submit in ms, acknowledged submits per second, and rankloop / Label Studio ratios.

    .venv/bin/python scripts/bench/annotate_load.py                     # everything (about 10 minutes)
    .venv/bin/python scripts/bench/annotate_load.py --sizes 1 5 --no-labelstudio --items 10
    .venv/bin/python scripts/bench/annotate_load.py --with-job          # also beside a reward-training job

On PostgreSQL (issue 15): `--database URL` (an empty or freshly migrated database) or `--postgres` (a throw-away
cluster from tests/pg_cluster.py) adds PostgreSQL configurations to the same run, one per `--servers` count
(`rankloop serve` processes on one workspace, the sessions spread over them, each sticky to its server), after the
DuckDB one (one server); the same judgments and items on both backends, and every figure's ratio against DuckDB's
from this run at the end. The PostgreSQL configurations share one database, seeded once (the second runs with the
first's few hundred submits also stored).

    .venv/bin/python scripts/bench/annotate_load.py --postgres --servers 1 2 --sizes 1 20 --items 10 --seconds 20 \
        --judgments 20000 --no-labelstudio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.app_client import AppSession, free_port, start_server, stop_server  # noqa: E402
from scripts.bench.annotate_latency import percentile, seed, store_only  # noqa: E402

PASSWORD = "bench password"
LS_VERSION = "1.23.*"
LS_HOME = Path(os.environ.get("RANKLOOP_BENCH_CACHE", Path.home() / ".cache" / "rankloop-bench")) / "labelstudio"
LS_CONFIG = """<View><Text name="prompt" value="$prompt"/><Text name="a" value="$a"/><Text name="b" value="$b"/>
<Choices name="pref" toName="prompt" choice="single" required="true"><Choice value="A"/><Choice value="B"/></Choices>
</View>"""


@dataclass
class Figures:
    keys: list[float] = field(default_factory=list)
    submits: list[float] = field(default_factory=list)
    acked: int = 0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    duplicates: int = 0  # Label Studio: tasks that got more than one annotation

    @property
    def rate(self) -> float:
        return self.acked / self.wall_s if self.wall_s else 0.0


def _pause(paused: bool, rng: random.Random) -> float:
    return rng.uniform(1.0, 3.0) if paused else 0.0


# --- rankloop --------------------------------------------------------------------------------------------------------

async def _rankloop_session(url: str, name: str, items: int, clock: dict, paused: bool, out: Figures,
                            rng: random.Random) -> None:
    s = AppSession(url)
    await s.connect()
    await s.login(name, PASSWORD)
    if s.item() is None:  # a page that asks the reviewer to start (admins), or a genuinely empty queue
        with contextlib.suppress(LookupError):
            await s.click(s.button("b-review"))
    clock["logged_in"] += 1
    await clock["ready"].wait()  # every session logs in first (argon2: not part of the figures), then all start
    done = 0
    try:
        while done < items or (paused and time.monotonic() < clock["until"]):
            if s.item() is None:
                out.errors.append(f"{name}: queue empty")
                return
            await asyncio.sleep(_pause(paused, rng))
            t0 = time.perf_counter()
            await s.click(s.button("b-a"))
            out.keys.append(time.perf_counter() - t0)
            await asyncio.sleep(_pause(paused, rng))
            t0 = time.perf_counter()
            await s.click(s.button("b-submit"))
            elapsed = time.perf_counter() - t0
            if s.judgment_id() is None:
                out.errors.append(f"{name}: no acknowledgement: {s.texts('alert')[:1]}")
                continue
            out.submits.append(elapsed)
            out.acked += 1
            done += 1
    finally:
        await s.close()


async def _rankloop_run(urls: str | list[str], names: list[str], items: int, seconds: float, paused: bool) -> Figures:
    """The sessions spread over the servers at `urls` (session i on server i mod len(urls), sticky)."""
    urls = [urls] if isinstance(urls, str) else urls
    out = Figures()
    clock = {"logged_in": 0, "ready": asyncio.Event(), "until": float("inf")}
    rng = random.Random(len(names) * 2 + paused)
    tasks = [asyncio.create_task(_rankloop_session(urls[i % len(urls)], n, 0 if paused else items, clock, paused,
                                                   out, random.Random(rng.random()))) for i, n in enumerate(names)]
    while clock["logged_in"] < len(names) and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    clock["until"] = t0 + seconds
    clock["ready"].set()
    await asyncio.gather(*tasks)
    out.wall_s = time.monotonic() - t0
    return out


# --- Label Studio ----------------------------------------------------------------------------------------------------

def install_labelstudio() -> Path:
    """Label Studio 1.23 in its own virtualenv under the bench cache (created once); returns its `label-studio`."""
    exe = LS_HOME / "bin" / "label-studio"
    if not exe.exists():
        print(f"installing Label Studio {LS_VERSION} into {LS_HOME} (once)", flush=True)
        LS_HOME.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([shutil.which("python3.11") or sys.executable, "-m", "venv", str(LS_HOME)], check=True)
        subprocess.run([str(LS_HOME / "bin" / "pip"), "install", "-q", f"label-studio=={LS_VERSION}"], check=True)
    return exe


def _ls_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANKLOOP_", "VIRTUAL_ENV"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), DJANGO_DB="sqlite", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="false",
               COLLECT_ANALYTICS="false", LOG_LEVEL="ERROR")
    return env


_LS_USERS = """
import sys
from users.models import User
from organizations.models import Organization
from rest_framework.authtoken.models import Token
org = Organization.objects.first()
owner = org.created_by
for name, token in (line.split() for line in sys.stdin.read().split(chr(10)) if line.strip()):
    u = User.objects.filter(email=name + "@bench.local").first() or User.objects.create_user(
        email=name + "@bench.local", username=name, password="bench password")
    u.active_organization = org
    u.save()
    org.add_user(u)
    Token.objects.filter(user=u).delete()
    Token.objects.create(user=u, key=token)
print("users ok")
"""


class LabelStudio:
    """A Label Studio server on a fresh data folder, with one API token per reviewer."""

    def __init__(self, exe: Path, data: Path, names: list[str]):
        self.exe, self.data, self.names = exe, data, names
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(20)
        self.tokens = {n: secrets.token_hex(20) for n in names}
        self.proc: subprocess.Popen | None = None
        self.log = data / "server.log"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "start", "--no-browser", "--port", str(self.port), "--internal-host", "127.0.0.1",
                 "--data-dir", str(self.data), "--username", "owner@bench.local", "--password", PASSWORD,
                 "--user-token", self.admin_token, "--enable-legacy-api-token", "--log-level", "ERROR"],
                env=_ls_env(self.data), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Label Studio did not start; see {self.log}") from None
                time.sleep(1)
        shell = subprocess.run(
            [str(self.exe.parent / "python"), "-c",
             "import os, sys, django; sys.path.insert(0, os.path.dirname(__import__('label_studio').__file__)); "
             "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'core.settings.label_studio'); django.setup(); "
             f"exec({_LS_USERS!r})"],
            input="\n".join(f"{n} {t}" for n, t in self.tokens.items()), env=_ls_env(self.data),
            capture_output=True, text=True, timeout=300)
        if "users ok" not in shell.stdout:
            raise RuntimeError(f"Label Studio users: {shell.stdout[-2000:]} {shell.stderr[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # its own session: the server and the workers it started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def api(self, method: str, path: str, token: str | None = None, body: object = None) -> object:
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Token {token or self.admin_token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def project(self, tasks: int) -> int:
        p = self.api("POST", "/api/projects", body={"title": f"bench {time.time():.0f}", "label_config": LS_CONFIG,
                                                     "maximum_annotations": 1, "sampling": "Sequential sampling"})
        pid = int(p["id"])  # type: ignore[index]
        data = [{"prompt": f"bench prompt {i}", "a": f"bench answer {i}.0 " * 20, "b": f"bench answer {i}.1 " * 20}
                for i in range(tasks)]
        for start in range(0, tasks, 1000):
            self.api("POST", f"/api/projects/{pid}/import", body=data[start:start + 1000])
        return pid


def _ls_session(ls: LabelStudio, pid: int, name: str, items: int, until: float, paused: bool, out: Figures,
                rng: random.Random, seen: dict[int, int]) -> None:
    token = ls.tokens[name]
    done = 0
    while done < items or (paused and time.monotonic() < until):
        time.sleep(_pause(paused, rng))  # the key press of rankloop: local in Label Studio
        time.sleep(_pause(paused, rng))
        t0 = time.perf_counter()
        try:
            task = ls.api("GET", f"/api/projects/{pid}/next", token)
            ls.api("POST", f"/api/tasks/{task['id']}/annotations", token,  # type: ignore[index]
                   {"result": [{"from_name": "pref", "to_name": "prompt", "type": "choices",
                                "value": {"choices": ["A"]}}], "lead_time": 1.0})
        except (urllib.error.URLError, OSError, KeyError, TypeError) as e:
            out.errors.append(f"{name}: {type(e).__name__}: {e}")
            if len(out.errors) > 50:
                return
            continue
        out.submits.append(time.perf_counter() - t0)
        out.acked += 1
        seen[task["id"]] = seen.get(task["id"], 0) + 1  # type: ignore[index]
        done += 1


async def _ls_run(ls: LabelStudio, pid: int, names: list[str], items: int, seconds: float, paused: bool) -> Figures:
    out, seen = Figures(), {}
    rng = random.Random(len(names) * 2 + paused)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(names)) as pool:  # one thread per session (the default pool has 6)
        await asyncio.gather(*(loop.run_in_executor(
            pool, _ls_session, ls, pid, n, 0 if paused else items, t0 + seconds, paused, out,
            random.Random(rng.random()), seen) for n in names))
    out.wall_s = time.monotonic() - t0
    out.duplicates = sum(1 for n in seen.values() if n > 1)
    return out


# --- the run ---------------------------------------------------------------------------------------------------------

def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:7.0f}" if values else "      -"


def report(system: str, mode: str, n: int, f: Figures) -> None:
    print(f"{system:<13} {mode:<9} N={n:<3} key p50 {_ms(f.keys, 50)} p95 {_ms(f.keys, 95)} ms   "
          f"submit p50 {_ms(f.submits, 50)} p95 {_ms(f.submits, 95)} ms   {f.acked:5d} acked in {f.wall_s:5.1f} s = "
          f"{f.rate:6.1f}/s" + (f"   {f.duplicates} tasks annotated twice" if f.duplicates else "")
          + (f"   {len(f.errors)} errors (first: {f.errors[0]})" if f.errors else ""), flush=True)


def _ratio(a: list[float], b: list[float], q: float) -> str:
    return f"{percentile(a, q) / percentile(b, q):5.2f}x" if a and b else "    -"


@contextlib.contextmanager
def training_job(ws_root: Path, db: Path):
    """`rankloop train reward` (its defaults) launched as the Runs page launches it (a detached runner, nice 10)."""
    from rankloop.jobs import cancel, launch, read_log, refresh

    job = launch(ws_root, db, "train reward", {}, "", "bench")
    time.sleep(30)  # the snapshot and the model load come first
    state = next(j for j in refresh(db) if j.id == job.id)
    print(f"training job {job.id}: {state.status} ({read_log(job.log_path).text.strip().splitlines()[-1:]})",
          flush=True)
    try:
        yield job
    finally:
        cancel(db, job.id, "bench")
        deadline = time.monotonic() + 60
        while next(j for j in refresh(db) if j.id == job.id).active and time.monotonic() < deadline:
            time.sleep(0.5)


def store_figures(db: Path | str, items: int = 40, label: str = "store", judgments: int = 100_000) -> None:
    """The submit + lease-next transaction straight through the store, opening the file per unit of work (as a CLI
    command does, and as the server did) and on the instance `rankloop serve` keeps open."""
    from store import db as store_db

    ms = {}
    for how, held in (("opened per unit of work", False), ("kept open, as rankloop serve", True)):
        store_db.hold(held)
        try:
            ms[held] = store_only(db, "bench_store", items)
        finally:
            store_db.hold(False)
        print(f"{label:<13} submit + lease-next, {how:<29} p50 {_ms(ms[held], 50)} p95 {_ms(ms[held], 95)} ms "
              f"(n={len(ms[held])}, {judgments} judgments)", flush=True)
    print(f"{label:<13} kept open / opened per unit: p50 {_ratio(ms[True], ms[False], 50)}", flush=True)


def _pg_ratios(results: dict, configs: list, sizes: list[int], modes: list) -> None:
    """Each PostgreSQL configuration against DuckDB (one server) measured in this run."""
    others = [label for label, _, _ in configs if label != "rankloop"]
    if not others or not any(k[0] == "rankloop" for k in results):
        return
    print("\nPostgreSQL / DuckDB, same run (latency: < 1 is PostgreSQL faster; submits/s: > 1 is PostgreSQL faster)")
    for label in others:
        for mode, _ in modes:
            for n in sizes:
                a, b = results.get((label, mode, n)), results.get(("rankloop", mode, n))
                if a and b:
                    print(f"  {label:<12} {mode:<9} N={n:<3} key p50 {_ratio(a.keys, b.keys, 50)} "
                          f"p95 {_ratio(a.keys, b.keys, 95)}  submit p50 {_ratio(a.submits, b.submits, 50)} "
                          f"p95 {_ratio(a.submits, b.submits, 95)}  submits/s "
                          f"{a.rate / b.rate if b.rate else float('nan'):5.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20], help="Reviewer sessions per phase.")
    ap.add_argument("--items", type=int, default=20, help="Submits per session without a pause.")
    ap.add_argument("--seconds", type=float, default=30, help="Length of a paused phase.")
    ap.add_argument("--judgments", type=int, default=100_000, help="Judgments stored before the run.")
    ap.add_argument("--no-labelstudio", action="store_true", help="Only rankloop.")
    ap.add_argument("--with-job", action="store_true",
                    help="Also run the rankloop phases beside a `train reward` job (as the Runs page launches it).")
    ap.add_argument("--database", help="postgresql://USER@HOST:PORT/DB (empty or freshly migrated): also run on "
                                       "PostgreSQL, one configuration per --servers count.")
    ap.add_argument("--postgres", action="store_true",
                    help="Without --database: a throw-away PostgreSQL cluster (tests/pg_cluster.py) for the run.")
    ap.add_argument("--servers", type=int, nargs="+", default=[1],
                    help="PostgreSQL configurations: `rankloop serve` processes on the workspace (e.g. 1 2).")
    ap.add_argument("--no-duckdb", action="store_true", help="Only the PostgreSQL configurations.")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    on_pg = bool(args.database or args.postgres)
    if args.no_duckdb and not on_pg:
        ap.error("--no-duckdb needs --database or --postgres")
    if args.with_job and on_pg:
        ap.error("--with-job runs on DuckDB only")
    cluster = contextlib.nullcontext(args.database)
    if args.postgres and not args.database:
        from tests.pg_cluster import running_cluster

        @contextlib.contextmanager
        def throwaway():
            with running_cluster() as c:
                yield c.url

        cluster = throwaway()
    with cluster as database:
        _main(args, database)


def _start_servers(ws_root: Path, count: int, log_dir: Path) -> tuple[list[subprocess.Popen], list[str]]:
    procs, urls = [], []
    try:
        for i in range(count):
            proc, url = start_server(ws_root, log=log_dir / f"server-{ws_root.name}-{i}.log")
            procs.append(proc)
            urls.append(url)
    except BaseException:
        for proc in procs:
            stop_server(proc)
        raise
    return procs, urls


def _main(args: argparse.Namespace, database: str | None) -> None:
    modes = [("no pause", False), ("paused", True)]
    per_session = max(args.items, int(args.seconds / 4) + 5)
    per_config = sum(args.sizes) * per_session * len(modes)
    from rankloop.workspace import init_workspace
    from store.users import add_user

    tmp = Path(tempfile.mkdtemp(prefix="rankloop-load-"))
    names = [f"bench{i:02d}" for i in range(max(args.sizes))]
    # (label, workspace, servers): DuckDB with one server, then PostgreSQL with each --servers count
    backends = ([] if args.no_duckdb else [("duckdb", None, [1])]) + (
        [("postgresql", database, args.servers)] if database else [])
    configs: list[tuple[str, object, int]] = []
    workspaces = {}
    for backend, url, counts in backends:
        fresh = per_config * len(counts) * (2 if args.with_job else 1) + 100
        ws = init_workspace(tmp / f"ws-{backend}", database=url)
        t0 = time.perf_counter()
        seed(ws.db, args.judgments, fresh)
        for n in [*names, "bench_store"]:
            add_user(ws.db, n, "reviewer", PASSWORD, actor="bench")
        print(f"rankloop on {backend}: {args.judgments} judgments + {fresh} fresh comparisons seeded in "
              f"{time.perf_counter() - t0:.0f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
        workspaces[backend] = ws
        for c in counts:
            label = "rankloop" if backend == "duckdb" else f"pg {c} server{'s' * (c > 1)}"
            configs.append((label, ws, c))
    results: dict[tuple[str, str, int], Figures] = {}
    for label, ws, count in configs:
        procs, urls = _start_servers(ws.root, count, tmp)
        try:
            phases = [("", contextlib.nullcontext)]
            if args.with_job:
                phases.append(("+job", lambda ws=ws: training_job(ws.root, ws.db)))
            for tag, ctx in phases:
                with ctx():
                    for mode, paused in modes:
                        for n in args.sizes:
                            f = asyncio.run(_rankloop_run(urls, names[:n], args.items, args.seconds, paused))
                            results[(label + tag, mode, n)] = f
                            report(label + tag, mode, n, f)
        finally:
            for proc in procs:
                stop_server(proc)
    for backend, ws in workspaces.items():
        store_figures(ws.db, label="store" if backend == "duckdb" else "store pg", judgments=args.judgments)
    if "duckdb" not in workspaces:
        _pg_ratios(results, configs, args.sizes, modes)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    _pg_ratios(results, configs, args.sizes, modes)
    if not args.no_labelstudio:
        exe = install_labelstudio()
        ls = LabelStudio(exe, tmp / "labelstudio", names)
        try:
            t0 = time.perf_counter()
            ls.start()
            fresh = per_config + 100
            pid = ls.project(fresh)
            print(f"Label Studio {LS_VERSION}: started with {len(names)} users and {fresh} tasks in "
                  f"{time.perf_counter() - t0:.0f} s ({ls.url}, SQLite)", flush=True)
            for mode, paused in modes:
                for n in args.sizes:
                    f = asyncio.run(_ls_run(ls, pid, names[:n], args.items, args.seconds, paused))
                    results[("labelstudio", mode, n)] = f
                    report("labelstudio", mode, n, f)
        finally:
            ls.stop()
        print("\nrankloop / Label Studio (submit; < 1 is rankloop faster; submits/s: > 1 is rankloop faster)")
        for mode, _ in modes:
            for n in args.sizes:
                a, b = results.get(("rankloop", mode, n)), results.get(("labelstudio", mode, n))
                if a and b:
                    print(f"  {mode:<9} N={n:<3} submit p50 {_ratio(a.submits, b.submits, 50)}  "
                          f"p95 {_ratio(a.submits, b.submits, 95)}  submits/s "
                          f"{a.rate / b.rate if b.rate else float('nan'):5.2f}x")
    if args.with_job:
        print("\nbeside a training job / alone (rankloop)")
        for mode, _ in modes:
            for n in args.sizes:
                a, b = results.get(("rankloop+job", mode, n)), results.get(("rankloop", mode, n))
                if a and b:
                    print(f"  {mode:<9} N={n:<3} key p95 {_ratio(a.keys, b.keys, 95)}  submit p95 "
                          f"{_ratio(a.submits, b.submits, 95)}  submits/s {a.rate / b.rate if b.rate else 0:5.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
