"""`accelerate launch` for every trainer: which process this is, and the main process's values on every process.

Only the main process reads the workspace and writes run rows, models and reports; it prepares the run (snapshot,
run row, folder) and `share`s it, the others train on what it shares. Without `accelerate launch` there is one
process, it is the main one, and `share` returns its value unchanged.
"""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """accelerate's PartialState (is_main_process, num_processes, process_index, device)."""
    from accelerate import PartialState

    return PartialState()


def share(state: Any, value: Any) -> Any:
    """The main process's `value` on every process (a no-op in one process)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
