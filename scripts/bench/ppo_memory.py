"""Peak memory of one PPO step (rollout: sample, score, reference; then the clipped updates) with our chunked
token scoring (rl.ppo.score_tokens: hidden states, then TRL's chunked kernel over the LM head) against the old path
that built full-vocabulary float32 logits (B, T, V) for the policy, the reference and the loss.

Same policy (the default, SmolLM2-135M-Instruct, unless --policy), same HH prompts, same PPO config (the [ppo]
defaults: 16 prompts, 64 new tokens, 2 minibatches, 4 epochs, LoRA), same seeds, same run: each variant runs in its
own subprocess, one after the other, and the ratio is printed. A toy reward (response length) stands in for the
reward model, which is the same in both and not what is measured.

Peak memory: on CUDA torch's peak allocated during the steps; on a CPU the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs once the models are loaded) minus the resident set at that moment, i.e. what the
steps added. Run it under the shared lock: `flock /tmp/rankloop-cpu.lock python scripts/bench/ppo_memory.py`.

    python scripts/bench/ppo_memory.py                       # default policy, 2 steps
    python scripts/bench/ppo_memory.py --policy /path/to/model --prompts 16 --steps 1 --max-new-tokens 32
    python scripts/bench/ppo_memory.py --rollout-only      # sampling and scoring alone (no update)
    python scripts/bench/ppo_memory.py --checkpointing     # both with the update's layers checkpointed
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_harness import ROOT, hh_pairs  # noqa: E402 (this folder)


def full_scores(model, r, temperature, value_head=None, with_entropy=False):
    """The old path: the whole model forward (B, P + T, V) logits, then float32 log_softmax over the vocabulary."""
    from rl.ppo import logprobs_of

    pos = (r["attn"].cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=r["seqs"], attention_mask=r["attn"], position_ids=pos,
                output_hidden_states=value_head is not None)
    logp, entropy = logprobs_of(out.logits[:, r["width"] - 1:-1], r["response"], temperature)
    values = value_head(out.hidden_states[-1][:, r["width"] - 1:-1]) if value_head is not None else None
    return logp * r["mask"], entropy * r["mask"] if with_entropy else None, values


def loop_class(variant: str):
    import torch

    from rl.ppo_train import PPOLoop

    if variant == "chunked":
        return PPOLoop

    class FullScorer(torch.nn.Module):
        def __init__(self, policy, value_head):
            super().__init__()
            self.policy, self.value_head = policy, value_head

        def forward(self, seqs, attn, width, tokens, mask, temperature, with_values=True, with_entropy=False):
            r = {"seqs": seqs, "attn": attn, "width": width, "response": tokens, "mask": mask}
            return full_scores(self.policy, r, temperature, self.value_head if with_values else None, with_entropy)

    class FullLogitsLoop(PPOLoop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scorer = FullScorer(self.model, self.value_head)

        def _score(self, model, r, value_head=None, with_entropy=False):
            with self._autocast():
                return full_scores(model, r, self.config.temperature, value_head, with_entropy)

    return FullLogitsLoop


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.ppo_config import PPOTrainingConfig

    if args.policy == "smollm2-135m-instruct":
        from rankloop.models import prepare_default_policy

        args.policy = str(prepare_default_policy())
    config = PPOTrainingConfig(policy=args.policy, max_steps=args.steps, rollout_batch_size=args.prompts,
                               max_new_tokens=args.max_new_tokens, report_to=[], missing_eos_penalty=0.0)
    prompts = [[{"role": "user", "content": text}] for text in hh_pairs(args.prompts).prompt_text]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    loop = loop_class(args.variant)(config, AutoModelForCausalLM.from_pretrained(args.policy),
                                    AutoTokenizer.from_pretrained(args.policy),
                                    lambda p, responses: [len(t) / 100 for t in responses], prompts, device,
                                    checkpointing=args.checkpointing)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        base = rss_mib("VmRSS")
    started = time.perf_counter()
    if args.rollout_only:  # the rollout alone: where the scoring's full logits were the largest tensors
        rolled = [loop.rollout() for _ in range(args.steps)]
        rows = [{"score": r["raw_scores"].mean().item(), "response_length": r["mask"].sum(1).mean().item(),
                 "sample_s": r["generate_s"], "score_s": r["score_s"], "update_s": 0.0} for r in rolled]
    else:
        rows = [loop.train_step() for _ in range(args.steps)]
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib("VmHWM")
    spent = {part: sum(r[f"{part}_s"] for r in rows) for part in ("sample", "score", "update")}
    print("RESULT " + json.dumps({
        "variant": args.variant, "checkpointing": bool(loop.checkpointed), "device": device, "steps": args.steps,
        "seconds": round(seconds, 1),
        "base_mib": round(base, 1), "peak_mib": round(peak, 1), "step_peak_mib": round(peak - base, 1),
        "sample_share": round(spent["sample"] / sum(spent.values()), 3),
        "score_share": round(spent["score"] / sum(spent.values()), 3),
        "update_share": round(spent["update"] / sum(spent.values()), 3),
        "scores": [round(r["score"], 4) for r in rows],
        "vocab": loop.model.config.vocab_size, "response_length": [r["response_length"] for r in rows]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="Policy folder or the default policy.")
    parser.add_argument("--prompts", type=int, default=16, help="rollout_batch_size (HH prompts).")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="PPO iterations measured.")
    parser.add_argument("--rollout-only", action="store_true", help="Measure the rollout (sample + score) alone.")
    parser.add_argument("--checkpointing", action="store_true", help=(
        "Both variants with the update's decoder layers checkpointed (rl.ppo.checkpointed_layers)."))
    parser.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        from training.device import prefer_huge_pages

        prefer_huge_pages()  # both variants as `rankloop train ppo` runs them (training/device.py)
        child(args)
        return
    results = {}
    for variant in ("full", "chunked"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, __file__, "--variant", variant, *sys.argv[1:]], capture_output=True,
                              text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
    full, chunked = results["full"], results["chunked"]
    what = "rollouts (no update)" if args.rollout_only else "PPO steps"
    print(f"policy {args.policy}, {args.prompts} prompts x {args.max_new_tokens} new tokens, {args.steps} {what} "
          f"on {full['device']}")
    for name, r in (("full (B, T, V) logits", full), ("chunked (TRL kernel)", chunked)):
        print(f"{name:24s} step peak {r['step_peak_mib']:.0f} MiB over {r['base_mib']:.0f} MiB loaded "
              f"(process peak {r['peak_mib']:.0f} MiB), {r['seconds']:.1f} s; time: sampling {r['sample_share']:.0%}, "
              f"scoring {r['score_share']:.0%}, update {r['update_share']:.0%}")
    print(f"ratio (chunked / full): {chunked['step_peak_mib'] / full['step_peak_mib']:.2f}x step peak memory, "
          f"{chunked['seconds'] / full['seconds']:.2f}x time; same scores: {chunked['scores'] == full['scores']}")
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
