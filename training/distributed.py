"""`accelerate launch` for every trainer: which process this is, and the main process's values on every process.

Only the main process reads the workspace and writes run rows, models and reports; it prepares the run (snapshot,
run row, folder) and `share`s it, the others train on what it shares. Without `accelerate launch` there is one
process, it is the main one, and `share` returns its value unchanged.
"""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """accelerate's PartialState (is_main_process, num_processes, process_index, device). On CPUs it honours
    ACCELERATE_USE_CPU as accelerate's AcceleratorState does (PartialState alone does not, and would take each process
    of a CPU launch for a lone one): `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`
    (accelerate's `--cpu` with N > 1 starts one process unless mpirun is set up)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def share(state: Any, value: Any) -> Any:
    """The main process's `value` on every process (a no-op in one process)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
