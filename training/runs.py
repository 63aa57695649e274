"""A run's life on its row: opened (status running) with its folder, closed as succeeded / failed / cancelled, and
resumed from its recorded config. Ctrl-C (SIGINT, the job runner's cancel) closes a run as cancelled, every other
error as failed, with the error's first 2,000 characters."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from store.workspace import WorkspaceLike

ERROR_CHARS = 2000  # what a run row keeps of an error
_interrupt = {"seen": False, "watching": False}


def watch_interrupts() -> None:
    """Remember a SIGINT that reaches this process from now on. A library may turn the KeyboardInterrupt into an
    error of its own (DuckDB raises RuntimeError("Query interrupted") when the signal lands in a query, and
    InvalidInputException when it lands in Python code a query runs; the trainers write rows while a run opens and
    closes); the run is still cancelled, not failed. Called when a run opens (`open_run`, `closed_on_error`). The
    main thread only (signal handlers live there); a process that ignores SIGINT is left alone."""
    _interrupt["seen"] = False
    if _interrupt["watching"] or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        _interrupt["seen"] = True
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: what the default would do to a Python process's main thread
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    _interrupt["watching"] = True


def interrupted(e: BaseException) -> bool:
    """Whether `e` ends a run because someone interrupted it: a KeyboardInterrupt, or any error raised after a SIGINT
    reached this process (`watch_interrupts`)."""
    return isinstance(e, KeyboardInterrupt) or _interrupt["seen"]


def open_run(ws: WorkspaceLike, kind: str, record: dict[str, Any], snapshot: dict[str, Any] | None = None,
             resume_from: int | None = None, prefix: str | None = None,
             parent: Path | None = None, rows: WorkspaceLike = None) -> tuple[int, Path]:
    """(run id, run folder) of a new row (status running). A resumed run reuses the old run's folder and closes the
    old row as cancelled when a kill left it running; otherwise the folder is <parent>/<prefix>-<id> (default:
    runs/<kind>-<id>). `rows` (the snapshot's frame) are saved in the folder (`training.snapshot.save_rows`) and
    `snapshot` gains the file's name and sha256, on the row and in place."""
    from store.runs import finish_run, get_run, start_run, update_run

    watch_interrupts()
    run_id = start_run(ws.db, kind, record, snapshot)
    if resume_from is not None:
        run_dir = Path(get_run(ws.db, resume_from).output_path)
    else:
        run_dir = (parent or ws.runs_dir) / f"{prefix or kind}-{run_id}"
    if rows is not None and snapshot is not None:
        from training.snapshot import save_rows

        snapshot.update(save_rows(run_dir, rows, snapshot))
    update_run(ws.db, run_id, output_path=str(run_dir), data_snapshot=snapshot if rows is not None else None)
    if resume_from is not None and get_run(ws.db, resume_from).status == "running":
        finish_run(ws.db, resume_from, "cancelled", error=f"interrupted; resumed by run {run_id}")
    return run_id, run_dir


def fail_run(db: Any, run_id: int, e: BaseException) -> None:
    """Close the row after `e`: cancelled after Ctrl-C (`interrupted`), failed otherwise."""
    from store.runs import finish_run

    finish_run(db, run_id, "cancelled" if interrupted(e) else "failed",
               error=f"{type(e).__name__}: {e}"[:ERROR_CHARS])


@contextlib.contextmanager
def closed_on_error(db: Any, run_id: int, record: bool = True) -> Iterator[None]:
    """The body's exception closes run `run_id` (`fail_run`) and goes on up; `record=False` (a process other than
    the main one under `accelerate launch`) leaves the row alone."""
    watch_interrupts()
    try:
        yield
    except BaseException as e:
        if record:
            fail_run(db, run_id, e)
        raise


def resume_config(ws: WorkspaceLike, kind: str, run: int | str, overrides: dict[str, Any] | None,
                  parse: Callable[[dict[str, Any], Any, str], Any]) -> tuple[int, Any]:
    """(run id, its recorded config with `overrides`) for `--resume`: `run` is an id or "latest" (the newest `kind`
    run that did not succeed). `parse(raw, base, where)` builds the config (base None: the defaults)."""
    from store.runs import get_run, list_runs

    if run == "latest":
        candidates = [r for r in list_runs(ws.db, kind=kind) if r.status != "succeeded"]
        if not candidates:
            raise ValueError(f"--resume: no unfinished {kind} run in this workspace to resume")
        row = candidates[-1]
    else:
        row = get_run(ws.db, int(run))
    if row.kind != kind:
        raise ValueError(f"--resume: run {row.id} is a {row.kind!r} run, not a {kind} run")
    if row.status == "succeeded":
        raise ValueError(f"--resume: run {row.id} already succeeded; start a new run instead")
    saved = parse(row.config["config"], None, f"run {row.id} config: ")
    return row.id, parse(overrides or {}, saved, "command line: ")
