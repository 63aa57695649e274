"""`accelerate launch` for every trainer: which process this is, the main process's values on every process, and a
run that fails on any process ending as failed on the main one.

Only the main process reads the workspace and writes run rows, models and reports; it prepares the run (snapshot,
run row, folder) and `share`s it, the others train on what it shares. Without `accelerate launch` there is one
process, it is the main one, and `share` returns its value unchanged.

A failure on another process (`every_process_guard`): that process writes its error into the run folder
(`failures/run<ID>-process<N>.txt`) and exits; the launcher (torch elastic, under `accelerate launch`) then stops
the remaining processes with SIGTERM, which on the main process raises `OtherProcessFailed`, so the run row is
closed as failed with the other process's error. When the main process notices first (a collective whose peer has
gone), the row gets the same message. When it cannot notice (blocked in an NCCL collective, where no Python signal
handler runs), a watcher thread closes the row: on the SIGTERM (through the wakeup fd) or on a note (polled every
second). A process killed outright (out of memory) writes no note; the row then says the main process was stopped
by the launcher, and the launch's output holds the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def process_state() -> Any:
    """accelerate's PartialState (is_main_process, num_processes, process_index, device). On CPUs it honours
    ACCELERATE_USE_CPU as accelerate's AcceleratorState does (PartialState alone does not, and would take each process
    of a CPU launch for a lone one): `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`
    (accelerate's `--cpu` with N > 1 starts one process unless mpirun is set up). A machine without CUDA counts as
    ACCELERATE_USE_CPU=1, so `accelerate launch --config_file configs/accelerate/ddp.yaml` there is a CPU launch."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    if state.num_processes > 1:
        atexit.unregister(_leave_process_group)  # registered once however often this is called
        atexit.register(_leave_process_group)
    return state


def _leave_process_group() -> None:
    """At exit, tear the launch's process group down while Python still runs, not in the C++ destructors after it:
    a second CPU process sometimes aborted (SIGABRT, exit -6) at its very end in CI, its training done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def share(state: Any, value: Any) -> Any:
    """The main process's `value` on every process (a no-op in one process)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def train_on_every_process(db: Any, prepare: Callable[[], dict[str, Any]],
                           train: Callable[[dict[str, Any], Any], T]) -> tuple[dict[str, Any], T]:
    """The life every trainer shares under `accelerate launch`: the main process alone calls `prepare()` (reads the
    workspace, opens the run: a dict with at least "run_id" and "run_dir"), every process gets what it returned and
    calls `train(prepared, state)` inside `every_process_guard` (a failure on any process: the run failed). Returns
    (prepared, what `train` returned). In one process: prepare, then train under `closed_on_error`."""
    state = process_state()
    prepared = share(state, prepare() if state.is_main_process else None)
    with every_process_guard(state, db, prepared["run_id"], Path(prepared["run_dir"])):
        return prepared, train(prepared, state)


class OtherProcessFailed(BaseException):
    """The main process is stopped because another process of the launch failed (or the launch was stopped).

    A BaseException, as KeyboardInterrupt: a library's `except Exception` must not swallow it and train on alone."""


def failure_note(run_dir: Path, run_id: int, index: int) -> Path:
    """Where process `index` of run `run_id` leaves its error (run folders are on the launching machine's disk)."""
    return Path(run_dir) / "failures" / f"run{run_id}-process{index}.txt"


def failure_notes(run_dir: Path, run_id: int) -> list[str]:
    """The errors other processes of run `run_id` left, in process order."""
    folder = Path(run_dir) / "failures"
    if not folder.is_dir():
        return []
    notes = sorted(folder.glob(f"run{run_id}-process*.txt"), key=lambda p: int(p.stem.rsplit("process", 1)[1]))
    return [p.read_text(encoding="utf-8", errors="replace").strip() for p in notes]


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def every_process_guard(state: Any, db: Any, run_id: int, run_dir: Path) -> Iterator[None]:
    """`training.runs.closed_on_error` for a run that every process trains: in one process exactly that; under
    several, the main process closes the row as failed (cancelled for Ctrl-C) when it raises, when SIGTERM stops it
    (the launcher's answer to another process failing) or after another process left a failure note; the others
    never touch the row: they leave a note in the run folder and re-raise."""
    from training.runs import ERROR_CHARS, closed_on_error, fail_run, interrupted, watch_interrupts

    if state.num_processes == 1:
        with closed_on_error(db, run_id):
            yield
        return
    if not state.is_main_process:
        try:
            yield
        except BaseException as e:
            note = failure_note(run_dir, run_id, state.process_index)
            with contextlib.suppress(OSError):
                note.parent.mkdir(parents=True, exist_ok=True)
                note.write_text(f"process {state.process_index} of {state.num_processes} failed: "
                                f"{_describe(e)}"[:ERROR_CHARS], encoding="utf-8")
            raise
        return

    def stop_message() -> str:
        notes = failure_notes(run_dir, run_id)
        return "; ".join(notes) if notes else (
            "the main process was stopped by SIGTERM: under `accelerate launch` the launcher sends it when another "
            "process fails (its error is in the launch's output) or when the launch itself is stopped")

    def stopped(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM ends the process the usual way
        raise OtherProcessFailed(stop_message())

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped) if in_main_thread else None
    watcher = _Watcher(db, run_id, run_dir, stop_message, in_main_thread)
    watch_interrupts()
    try:
        yield
    except BaseException as e:
        watcher.stop()
        notes = [] if isinstance(e, OtherProcessFailed) or interrupted(e) else failure_notes(run_dir, run_id)
        fail_run(db, run_id, OtherProcessFailed(f"{'; '.join(notes)} (then on the main process: {_describe(e)})")
                 if notes else e)  # the main thread has the last word, after the watcher's
        raise
    finally:
        watcher.stop()
        if in_main_thread and signal.getsignal(signal.SIGTERM) is stopped:
            signal.signal(signal.SIGTERM, previous)


class _Watcher:
    """A thread of the main process that closes the row as failed while the main thread cannot: blocked in a
    collective whose peer has died (NCCL waits rather than fails), Python runs no signal handler, and the launcher's
    SIGKILL follows its SIGTERM after 30 s. It wakes on SIGTERM (Python's C-level handler writes to the wakeup fd
    from any thread) and looks for other processes' failure notes every `every` seconds; it writes only while the
    row is still running."""

    def __init__(self, db: Any, run_id: int, run_dir: Path, stop_message: Any, wake_on_signal: bool,
                 every: float = 1.0) -> None:
        import os

        self.db, self.run_id, self.run_dir, self.stop_message, self.every = db, run_id, run_dir, stop_message, every
        self.done = threading.Event()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.old_wakeup = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False) if wake_on_signal else None
        self.thread = threading.Thread(target=self._run, name="rankloop-run-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import os
        import select

        while not self.done.is_set():
            ready, _, _ = select.select([self.read_fd], [], [], self.every)
            if self.done.is_set():
                return
            signalled = bool(ready) and signal.SIGTERM in os.read(self.read_fd, 64)
            if signalled or failure_notes(self.run_dir, self.run_id):
                with contextlib.suppress(Exception):  # a watcher must never take the process down
                    self._close(self.stop_message() if signalled else "; ".join(
                        failure_notes(self.run_dir, self.run_id)))
                return  # closed once; the main thread, when it raises, writes the fuller message

    def _close(self, message: str) -> None:
        from store.runs import get_run
        from training.runs import fail_run

        if get_run(self.db, self.run_id).status == "running":
            fail_run(self.db, self.run_id, OtherProcessFailed(message))

    def stop(self) -> None:
        import os

        if self.done.is_set():
            return
        self.done.set()
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"\0")  # wakes the thread
        self.thread.join(timeout=5)
        if self.old_wakeup is not None:
            signal.set_wakeup_fd(self.old_wakeup)
        os.close(self.read_fd)
        os.close(self.write_fd)
