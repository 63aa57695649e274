"""What the trainer throughput benchmarks (reward_throughput.py, dpo_throughput.py) share: the HH pairs, a
workspace holding them, a per-step timer, peak memory, and running each variant in its own subprocess (so its
peak memory is its own) and printing the ratio of ours to TRL's defaults."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "scripts" / "data" / "hh_rlhf_harmless_base.derived_from_test.train.jsonl.gz"


def step_timer() -> Any:
    """A TrainerCallback that records the wall time of every optimizer step (evaluation and saving left out)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self.started)

    return StepTimer()


def hh_pairs(n: int) -> Any:
    """The first n pairs of the HH train file (prompt_text, chosen, rejected...)."""
    from reward.data import read_pairs_file

    return read_pairs_file(DATA).head(n).reset_index(drop=True)


def hh_workspace(n: int, prefix: str) -> Any:
    """A new workspace in a temporary folder holding the first n HH pairs as judged comparisons."""
    from rankloop.workspace import init_workspace
    from store.batch import Batch, Comparison, Judgment, Prompt, Response, write_batch
    from store.db import write

    ws = init_workspace(Path(tempfile.mkdtemp(prefix=prefix)) / "ws")
    batch = Batch()
    for i, row in hh_pairs(n).iterrows():
        batch.prompts.append(Prompt(i, [{"role": "user", "content": row.prompt_text}], text=row.prompt_text))
        batch.responses += [Response((i, "c"), i, row.chosen), Response((i, "r"), i, row.rejected)]
        batch.comparisons.append(Comparison(i, i, [(i, "c"), (i, "r")]))
        batch.judgments.append(Judgment(i, "hh", f"bench-{i}", ranking=[[(i, "c")], [(i, "r")]]))
    write(ws.db, lambda con: write_batch(con, batch))
    return ws


def resolve_policy_offline(policy: str) -> str:
    """A policy folder; the default policy's name is converted (once, cached) from its PyPI package."""
    if policy == "smollm2-135m-instruct":
        from rankloop.models import prepare_default_policy

        return str(prepare_default_policy())
    return policy


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict]) -> None:
    """Run one variant in this process and print its RESULT line; the first step is a warm-up, not counted (unless
    the variant returns `"warmup_steps": 0`, e.g. when its first batch is its widest; `"examples_timed"`: the
    examples its timed steps trained on, when a batch was short)."""
    started = time.perf_counter()
    out = run(args)
    timed = out["durations"][out.pop("warmup_steps", 1):]
    examples = out.pop("examples_timed", None) or len(timed) * args.batch_size  # a variant may count a short batch
    out.update({"variant": args.variant, "steps_timed": len(timed), "seconds_timed": sum(timed),
                "pairs_per_s": examples / sum(timed) if timed else None,
                "peak_memory_mb": round(peak_memory_mb(), 1), "wall_s": round(time.perf_counter() - started, 1)})
    print("RESULT " + json.dumps(out))


def compare(script: str, args: argparse.Namespace, names: dict[str, str], heading: str) -> None:
    """Run `script --variant V` for each variant ('rankloop', 'trl') in turn, print both and the ratio."""
    results = {}
    for variant in names:
        cmd = [sys.executable, script, "--variant", variant, *sys.argv[1:]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
    ours, trl = results["rankloop"], results["trl"]
    print(heading)
    width = max(len(name) for name in names.values()) + 2
    for variant, name in names.items():
        r = results[variant]
        print(f"{name:{width}s} {r['pairs_per_s']:.3f} pairs/s over {r['steps_timed']} timed steps, "
              f"peak memory {r['peak_memory_mb']:.0f} MiB, settings {r['settings']}")
    print(f"ratio (rankloop / TRL defaults): {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x pairs/s, "
          f"{ours['peak_memory_mb'] / trl['peak_memory_mb']:.2f}x peak memory")
    print(json.dumps({"args": vars(args), "results": results}, default=str))
