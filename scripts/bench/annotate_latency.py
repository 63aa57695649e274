"""Latency of the ranking page under N concurrent reviewers, with 100k judgments already in the workspace.

Each simulated reviewer is a real browser page (Debian chromium through playwright, one browser, N contexts):
it logs in, then for each item presses 1 (A better) and Enter, and the clock runs from the Enter key to the
moment the next item's heading is on screen, so a figure covers the submit transaction, leasing the next item,
the script rerun and the websocket round trip on localhost. The same submit-and-lease transaction is also
timed straight through the store (no server) for comparison.

    .venv/bin/python scripts/bench/annotate_latency.py --reviewers 4 --items 15
    .venv/bin/python scripts/bench/annotate_latency.py --url http://127.0.0.1:8501/ --workspace WS  # a running server
    .venv/bin/python scripts/bench/annotate_latency.py --reviewers 2 --items 10 --with-job

`--with-job` measures three phases in one run: no background job (the baseline), then while a reward-training job
launched as from the Runs page (MiniLM, full fine-tuning) fills the cores at nice 0, then at nice 10 (the
default, RANKLOOP_JOB_NICE), and prints each phase's p50/p95 as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rankloop.workspace import init_workspace  # noqa: E402
from scripts.app_client import start_server, stop_server  # noqa: E402
from store.batch import Batch, Comparison, Judgment, Prompt, Response, write_batch  # noqa: E402
from store.db import transaction  # noqa: E402
from store.queue import Answer, next_item, submit_and_next  # noqa: E402
from store.users import add_user  # noqa: E402

SETTLED = ("() => !document.querySelector('[data-stale=\"true\"]') && "
           "!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')")
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


def seed(db: Path, judged: int, fresh: int) -> None:
    """`judged` imported judgments on pairwise comparisons (one each), then `fresh` comparisons nobody judged."""
    batch = Batch()
    for i in range(judged + fresh):
        batch.prompts.append(Prompt(key=i, messages=[{"role": "user", "content": f"bench prompt {i}"}]))
        batch.responses += [Response(key=(i, j), prompt_key=i, text=f"bench answer {i}.{j} " * 20) for j in (0, 1)]
        batch.comparisons.append(Comparison(key=i, prompt_key=i, response_keys=[(i, 0), (i, 1)],
                                            round=0 if i < judged else 1))
        if i < judged:
            batch.judgments.append(Judgment(comparison_key=i, reviewer=f"import{i % 50}", idempotency_key=f"b{i}",
                                            ranking=[[(i, 0)], [(i, 1)]], display_order=[(i, 0), (i, 1)]))
    with transaction(db) as con:
        write_batch(con, batch)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def reviewer(browser, url: str, name: str, items: int, out: list[float], failures: list[str]) -> None:
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    context = await browser.new_context(viewport={"width": 1300, "height": 1000})
    page = await context.new_page()
    await page.goto(url)
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password", exact=True).fill("bench password")
    await page.keyboard.press("Enter")
    heading = page.get_by_text("Prompt · item ").first
    await heading.wait_for(timeout=60_000)
    for i in range(items):
        try:
            await page.wait_for_function(SETTLED, timeout=30_000)
            current = await heading.inner_text()
            await page.keyboard.press("1")
            await page.get_by_text("not changed yet").first.wait_for(state="detached", timeout=30_000)
            await page.wait_for_function(SETTLED, timeout=30_000)
            t0 = time.perf_counter()
            await page.keyboard.press("Enter")
            await page.wait_for_function(
                "t => [...document.querySelectorAll('h3')].some(h => h.innerText.startsWith('Prompt · item ')"
                " && h.innerText !== t) || document.body.innerText.includes('Your queue is empty')",
                arg=current, timeout=30_000, polling="raf")
            out.append(time.perf_counter() - t0)
        except PlaywrightTimeout as e:
            shot = Path(tempfile.gettempdir()) / f"bench-{name}-{i}.png"
            await page.screenshot(path=str(shot), full_page=True)
            failures.append(f"{name} item {i}: {str(e).splitlines()[0]} (screenshot {shot})")
            break
    await context.close()


async def run_browsers(url: str, names: list[str], items: int) -> tuple[list[float], list[str]]:
    from playwright.async_api import async_playwright

    out: list[float] = []
    failures: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROME_ARGS)
        await asyncio.gather(*(reviewer(browser, url, n, items, out, failures) for n in names))
        await browser.close()
    return out, failures


def store_only(db: Path, name: str, items: int) -> list[float]:
    """The same submit + lease-next transaction without the server, for one reviewer."""
    from store.users import get_user

    uid = get_user(db, name).id
    item, out = next_item(db, uid), []
    for _ in range(items):
        if item is None:
            break
        t0 = time.perf_counter()
        _, item = submit_and_next(db, item.lease_id, uid, name, Answer(ranking=[[r] for r, _ in item.responses]))
        out.append(time.perf_counter() - t0)
    return out


@contextlib.contextmanager
def background_job(ws, nice: int):
    """A reward-training job (as the Runs page launches it) running at `nice` while the block runs."""
    from rankloop.jobs import cancel, launch, read_log, refresh

    os.environ["RANKLOOP_JOB_NICE"] = str(nice)
    job = launch(ws.root, ws.db, "train reward", {"max-steps": 100_000, "max-pairs": 4000},
                 "report_to=[]\neval_steps=100000", "bench")
    deadline = time.monotonic() + 600
    while (read_log(job.log_path).done or 0) < 2:  # wait until it trains (the snapshot and loading come first)
        if time.monotonic() > deadline or not next(j for j in refresh(ws.db) if j.id == job.id).active:
            raise RuntimeError("the background job did not start training:\n" + read_log(job.log_path).text)
        time.sleep(1)
    try:
        yield job
    finally:
        cancel(ws.db, job.id, "bench")
        while next(j for j in refresh(ws.db) if j.id == job.id).active:
            time.sleep(0.5)


def report(label: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    if not ms:
        print(f"{label:<60} n=0")
        return
    print(f"{label:<60} n={len(ms):<4} p50 {percentile(ms, 50):7.1f} ms   p95 {percentile(ms, 95):7.1f} ms   "
          f"mean {statistics.mean(ms):7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reviewers", type=int, default=4, help="Concurrent simulated reviewers (browser pages).")
    ap.add_argument("--items", type=int, default=15, help="Items each reviewer submits.")
    ap.add_argument("--judgments", type=int, default=100_000, help="Judgments stored before the run.")
    ap.add_argument("--url", help="A running `rankloop serve` to use (needs --workspace, seeded by this script).")
    ap.add_argument("--workspace", type=Path, help="Workspace to seed (default: a temporary one).")
    ap.add_argument("--with-job", action="store_true", help="Also measure while a training job runs (nice 0, 10).")
    args = ap.parse_args()
    if args.url and not args.workspace:
        ap.error("--url needs the --workspace that server serves")
    tmp = None if args.workspace else Path(tempfile.mkdtemp(prefix="rankloop-bench-"))
    ws = init_workspace(args.workspace or tmp / "ws")
    names = [f"bench{i}" for i in range(args.reviewers)]
    t0 = time.perf_counter()
    phases = 3 if args.with_job else 1
    seed(ws.db, args.judgments, phases * args.reviewers * args.items + args.items + 10)
    for n in [*names, "bench_store"]:
        add_user(ws.db, n, "reviewer", "bench password", actor="bench")
    print(f"seeded {args.judgments} judgments in {time.perf_counter() - t0:.1f}s ({ws.db}, "
          f"{ws.db.stat().st_size / 1e6:.0f} MB)")
    proc, url = (None, args.url) if args.url else start_server(ws.root)
    results = {}
    try:
        for label, nice in [("no job (baseline)", None), *([("job at nice 0", 0), ("job at nice 10", 10)]
                                                             if args.with_job else [])]:
            with background_job(ws, nice) if nice is not None else contextlib.nullcontext():
                t0 = time.perf_counter()
                latencies, failures = asyncio.run(run_browsers(url, names, args.items))
                wall = time.perf_counter() - t0
            print(f"{label}: {args.reviewers} reviewers x {args.items} items in {wall:.1f}s wall (logins included), "
                  f"{os.cpu_count()} CPUs")
            for f in failures:
                print("FAILED", f)
            report(f"browser: Enter -> next item shown, {label}", latencies)
            results[label] = latencies
    finally:
        if proc is not None:
            stop_server(proc)
    base = results["no job (baseline)"]
    for label, values in list(results.items())[1:]:
        if base and values:
            print(f"{label} / no job: p50 {percentile(values, 50) / percentile(base, 50):.2f}x, "
                  f"p95 {percentile(values, 95) / percentile(base, 95):.2f}x")
    report("store: submit_and_next (no server)", store_only(ws.db, "bench_store", args.items))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
