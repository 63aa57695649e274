"""Do the policy trainers (DPO, SFT, KTO) ever hold full-vocabulary logits for every position of a batch at once?

Each trainer runs `--steps` optimizer steps of `rankloop train <kind>` (our defaults, the default policy, the first
--pairs HH pairs as judged comparisons: DPO trains on the pairs, SFT on each judgment's top answer, KTO on the top
answer as desirable and the bottom one as undesirable) in its own subprocess. During the last step every tensor an
op creates is watched (a TorchDispatchMode, CPU: backward runs on the calling thread): the script prints the
largest one, the largest whose last dimension is the vocabulary (a logits tile), and what the step's full float32
logits would take (tokens in the batch x vocabulary x 4 bytes), with the process's peak resident memory.

    python scripts/bench/policy_memory.py                     # dpo, sft, kto with our defaults
    python scripts/bench/policy_memory.py --kinds sft --set gradient_checkpointing=false
    python scripts/bench/policy_memory.py --trl-head                 # TRL's LM head tiles as shipped, to compare

The watched step is slower than the others (a Python call per op); only its tensor sizes are reported, not its time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from trainer_harness import ROOT, hh_workspace, peak_memory_mb, resolve_policy_offline  # noqa: E402 (this folder)


def tensor_watch(vocab: int):
    """A TrainerCallback that watches the tensors created during the last optimizer step."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from transformers import TrainerCallback

    class Largest(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.largest = (0, None, None)  # bytes, shape, op
            self.vocab_wide = (0, None, None)
            self.tokens = 0  # positions in the batch: the largest input_ids-like (integer, 2-D) tensor seen

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                    continue
                size = t.numel() * t.element_size()
                entry = (size, tuple(t.shape), str(func))
                if size > self.largest[0]:
                    self.largest = entry
                if t.dim() and t.shape[-1] * 2 > vocab and size > self.vocab_wide[0]:
                    self.vocab_wide = entry
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 2:
                    self.tokens = max(self.tokens, t.numel())
            return out

    class Watch(TrainerCallback):
        def __init__(self) -> None:
            self.mode: Largest | None = None
            self.durations: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()
            if state.global_step == state.max_steps - 1:
                self.mode = Largest()
                self.mode.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.mode is not None:  # the watched step
                self.mode.__exit__(None, None, None)
            else:
                self.durations.append(time.perf_counter() - self.started)

    return Watch()


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoConfig

    from reward.config import parse_assignment
    from rl.config import DPOTrainingConfig, KTOTrainingConfig, SFTTrainingConfig
    from rl.dpo import train_dpo
    from rl.kto import train_kto
    from rl.sft import train_sft
    from store.runs import get_run

    if args.trl_head:  # TRL's fused head as shipped: every position scored, 4096 x 32768 tiles
        import training.hf

        training.hf.lean_lm_head = lambda device: False
    policy = resolve_policy_offline(args.policy)
    vocab = AutoConfig.from_pretrained(policy).vocab_size
    cls, train = {"dpo": (DPOTrainingConfig, train_dpo), "sft": (SFTTrainingConfig, train_sft),
                  "kto": (KTOTrainingConfig, train_kto)}[args.kind]
    overrides = dict(parse_assignment(a) for a in args.assignments)
    config = cls(policy=policy, max_steps=args.steps, eval_steps=10**6, save_steps=10**6, eval_fraction=0.01,
                 max_length=args.max_length, report_to=[], early_stopping_patience=0,
                 per_device_train_batch_size=args.batch_size, **overrides)
    ws = hh_workspace(args.pairs, f"bench-mem-{args.kind}-")
    watch = tensor_watch(vocab)
    result = train(ws, config, progress=False, callbacks=[watch])
    device = get_run(ws.db, result.run_id).metrics["device"]  # what the per-device defaults picked
    mode = watch.mode
    mib = 2**20
    return {"kind": args.kind, "settings": {**overrides, "trl_head": args.trl_head,
                                            **{k: device[k] for k in ("bf16", "gradient_checkpointing")}},
            "peak_memory_mb": round(peak_memory_mb(), 1), "vocab": vocab,
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "step_seconds": [round(d, 2) for d in watch.durations],
            "tokens_in_batch": mode.tokens, "full_logits_mb": round(mode.tokens * vocab * 4 / mib, 1),
            "largest_tensor": {"mb": round(mode.largest[0] / mib, 1), "shape": mode.largest[1], "op": mode.largest[2]},
            "largest_vocab_wide": {"mb": round(mode.vocab_wide[0] / mib, 1), "shape": mode.vocab_wide[1],
                                   "op": mode.vocab_wide[2]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="Policy folder or the default policy.")
    parser.add_argument("--kinds", default="dpo,sft,kto", help="Trainers to check, comma-separated.")
    parser.add_argument("--pairs", type=int, default=64, help="Pairs taken from the HH train file.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2, help="Optimizer steps; the last one is watched.")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
                        help="A config field for every trainer, e.g. --set gradient_checkpointing=false.")
    parser.add_argument("--trl-head", action="store_true", help=(
        "Leave TRL's fused LM head as shipped (no training.hf.lean_lm_head), to compare."))
    parser.add_argument("--kind", choices=["dpo", "sft", "kto"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind:
        from training.device import prefer_huge_pages

        prefer_huge_pages()  # as the `rankloop` command does before torch loads (training/device.py)
        print("RESULT " + json.dumps(run(args), default=str))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    print(f"policy {args.policy}, {args.pairs} HH pairs, batch {args.batch_size}, max_length {args.max_length}")
    for kind in args.kinds.split(","):
        done = subprocess.run([sys.executable, __file__, "--kind", kind, *sys.argv[1:]], capture_output=True,
                              text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{kind} failed:\n{done.stderr[-3000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        wide = r["largest_vocab_wide"]
        print(f"{kind}: peak memory {r['peak_memory_mb']:.0f} MiB; batch of {r['tokens_in_batch']} positions, full "
              f"float32 logits would take {r['full_logits_mb']:.0f} MiB; largest vocabulary-wide tensor "
              f"{wide['mb']:.0f} MiB {wide['shape']} ({wide['op']}); largest tensor {r['largest_tensor']['mb']:.0f} "
              f"MiB {r['largest_tensor']['shape']}; steps {r['step_seconds']} s (watched step left out); settings "
              f"{r['settings']}")
        print(json.dumps(r, default=str))


if __name__ == "__main__":
    main()
