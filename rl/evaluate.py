"""`evaluate_policy(ws, NEW, against=OLD)`: on held-out prompts, sample from both policies, score with a reward
model, and report NEW's win rate (Wilson 95% interval), KL(NEW || OLD) on NEW's samples, the KL of each to the
reference policy (KL(NEW || REF) on NEW's samples, KL(OLD || REF) on OLD's), response lengths and a sample table,
as report.md + a PNG under the eval run's folder (runs/eval-policy-<ID>/).

The reference is the policy the KL penalty of training anchors to: by default the root of NEW's parent chain (the
first policy of the loop), loaded without its LoRA adapter when it has one (adapters disabled); `reference=NAME`
picks another. It costs one more model load (none when the reference is NEW or OLD) and two forward passes per
sample, no sampling."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl.config import PolicyEvalConfig
from store.workspace import WorkspaceLike

RUN_KIND = "eval_policy"
_D = PolicyEvalConfig()  # the defaults, declared once


def eval_prompts(db: Any, n: int, splits: list[str] | None = None) -> list[Any]:
    """The held-out prompts evaluation samples on: up to `n` of `splits` (default 'eval'), all prompts when none."""
    from store.prompts import list_prompts

    return list_prompts(db, ["eval"] if splits is None else splits, n) or list_prompts(db, [], n)


class PolicySamples:
    """Each policy loaded once and sampled once per set of prompts and sampling parameters: `evaluate_policy` and
    the loop's evaluation (rankloop/loop_eval.py) share one, so a policy of a loop round is sampled once. With a
    `cache` folder the samples are kept there as JSON (`<policy>.json`), so a rerun samples nothing again."""

    def __init__(self, db: Any, device: str | None = None, cache: Path | None = None, engine: str = "hf"):
        from rl.sampling import check_engine
        from training.device import pick_device

        check_engine(engine)  # 'vllm' without vLLM installed: said before any run row (rl/vllm_engine.py)
        self.db, self.choice, self.cache, self.engine = db, pick_device(device), cache, engine
        self.loaded: dict[str, tuple[Any, Any]] = {}
        self.drawn: dict[tuple, list[list[Any]]] = {}

    def model(self, name: str) -> tuple[Any, Any]:
        """(model, tokenizer) of the workspace policy `name`, loaded on first use."""
        if name not in self.loaded:
            from rl.sampling import load_policy, policy_location
            from store.models import get_model

            row = get_model(self.db, name)
            self.loaded[name] = load_policy(policy_location(row), self.choice.device, self.choice.dtype,
                                            row.adapter_path)
        return self.loaded[name]

    def samples(self, name: str, prompts: list[Any], params: Any) -> list[list[Any]]:
        """`params.k` completions (rl.sampling.Completion) per prompt from policy `name`."""
        from rl.sampling import Completion, sample_completions

        key = {"prompt_ids": [p.id for p in prompts], "k": params.k, "max_new_tokens": params.max_new_tokens,
               "temperature": params.temperature, "seed": params.seed}
        memo = (name, json.dumps(key))
        if memo in self.drawn:
            return self.drawn[memo]
        path = self.cache / f"{name}.json" if self.cache is not None else None
        saved = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
        if saved.get("key") == key:
            drawn = [[Completion(**c) for c in cs] for cs in saved["samples"]]
        elif self.engine == "vllm":  # the same batches and seeds, decoded by vLLM (rl.sampling.vllm_completions)
            from rl.sampling import vllm_completions
            from store.models import get_model

            drawn = vllm_completions(get_model(self.db, name), [p.messages for p in prompts], params, self.choice)
        else:
            model, tok = self.model(name)
            drawn = sample_completions(model, tok, [p.messages for p in prompts], params, self.choice.device)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"key": key, "samples": [[c.__dict__ for c in cs] for cs in drawn]}),
                               encoding="utf-8")
                tmp.replace(path)  # a kill never leaves half a cache
        self.drawn[memo] = drawn
        return drawn


@dataclass
class PolicyEvalResult:
    run_id: int
    new: str
    against: str
    report_dir: Path
    metrics: dict[str, Any]


def sequence_kl(new_model: Any, old_model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]],
                responses: list[str], device: str) -> list[float]:
    """Per response: sum over its tokens of log p_new - log p_old (a sample estimate of KL(new || old) when the
    responses were sampled from `new`)."""
    import torch

    from rl.sampling import prompt_ids

    out = []
    with torch.inference_mode():
        for messages, text in zip(prompts, responses, strict=True):
            p = prompt_ids(tokenizer, messages)
            r = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([p + r], device=device)  # (1, P + T)
            lp = []
            for model in (new_model, old_model):
                logits = model(input_ids=ids).logits[0, len(p) - 1:-1].float()  # (T, V)
                lp.append(torch.log_softmax(logits, -1).gather(-1, ids[0, len(p):, None]).sum().item())
            out.append(lp[0] - lp[1])
    return out


def reference_policy(db: Any, row: Any, name: str = "") -> Any:
    """The model row `name`, or by default the root of `row`'s parent chain."""
    from store.models import get_model, list_models

    if name:
        return get_model(db, name)
    by_id = {r.id: r for r in list_models(db)}
    seen = {row.id}
    while row.parent_id is not None and row.parent_id in by_id and row.parent_id not in seen:
        row = by_id[row.parent_id]
        seen.add(row.id)
    return row


def _chart(diffs: list[float], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(diffs, bins=20)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel("reward(new) - reward(old)")
    ax.set_ylabel("responses")
    fig.tight_layout()
    path = folder / "score_difference.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def evaluate_policy(ws: WorkspaceLike, new: str, against: str, *, reward: str = "",
                    max_prompts: int = _D.max_prompts, splits: list[str] | None = None, k: int = _D.k,
                    max_new_tokens: int = _D.max_new_tokens, temperature: float = _D.temperature,
                    seed: int = _D.seed, device: str | None = _D.device, samples_shown: int = _D.samples_shown,
                    reference: str = "", sampler: PolicySamples | None = None, engine: str = "hf") -> PolicyEvalResult:
    """Win rate of `new` over `against` by the reward model on held-out prompts (split 'eval', else all).
    `sampler` (default: a new one on `device`) loads and samples the policies; pass the caller's to reuse its
    samples."""
    from reward.score import RewardScorer
    from rl.sampling import SamplingParams, load_policy, policy_location
    from store.models import get_model, newest_model
    from store.runs import finish_run
    from training.runs import closed_on_error, open_run
    from training.stats import wilson_interval

    if sampler is None:
        from rl.sampling import check_engine

        check_engine(engine)  # before the run row
    new_row, old_row = get_model(ws.db, new), get_model(ws.db, against)
    for row in (new_row, old_row):
        if row.kind != "policy":
            raise ValueError(f"model {row.name!r} is a {row.kind} model; eval policy compares two policies")
    reward_row = newest_model(ws.db, "reward", reward)
    ref_row = reference_policy(ws.db, new_row, reference)
    if ref_row.kind == "reward":
        raise ValueError(f"reference {ref_row.name!r} is a reward model; name a policy")
    splits = ["eval"] if splits is None else splits
    rows = eval_prompts(ws.db, max_prompts, splits)
    if not rows:
        raise ValueError("no prompts in this workspace to evaluate on: import prompts first")
    params = SamplingParams(k=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    config = {"new": new, "against": against, "reward": reward_row.name, "prompts": len(rows), "k": k,
              "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "reference": ref_row.name}
    snapshot = {"prompt_ids": [r.id for r in rows], "splits": splits, "new_id": new_row.id, "against_id": old_row.id,
                "reward_model_id": reward_row.id}
    run_id, folder = open_run(ws, RUN_KIND, config, snapshot, prefix="eval-policy")
    with closed_on_error(ws.db, run_id):
        started = time.monotonic()
        sampler = sampler or PolicySamples(ws.db, device, engine=engine)
        choice = sampler.choice
        conversations = [r.messages for r in rows]
        samples = {row.name: sampler.samples(row.name, rows, params) for row in (new_row, old_row)}
        models = {row.name: sampler.model(row.name) for row in (new_row, old_row)}
        new_texts = [c.text for cs in samples[new] for c in cs]
        old_texts = [c.text for cs in samples[against] for c in cs]
        prompts = [conv for conv in conversations for _ in range(k)]
        scorer = RewardScorer.from_row(reward_row, device=choice.device)
        new_scores, old_scores = scorer.score(prompts, new_texts), scorer.score(prompts, old_texts)
        diffs = [a - b for a, b in zip(new_scores, old_scores, strict=True)]
        wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs)
        low, high = wilson_interval(wins, len(diffs))
        tok = models[new][1]
        kl = sequence_kl(models[new][0], models[against][0], tok, prompts, new_texts, choice.device)
        ref_model = models[ref_row.name][0] if ref_row.name in models and not ref_row.adapter_path else \
            load_policy(policy_location(ref_row), choice.device, choice.dtype, None)[0]  # adapters disabled
        kl_ref = {name: 0.0 if models[name][0] is ref_model else
                  statistics.fmean(sequence_kl(models[name][0], ref_model, tok, prompts, texts, choice.device))
                  for name, texts in ((new, new_texts), (against, old_texts))}
        lengths = {name: [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
                   for name, texts in ((new, new_texts), (against, old_texts))}
        metrics = {
            "win_rate": wins / len(diffs), "win_rate_low": low, "win_rate_high": high, "comparisons": len(diffs),
            "prompts": len(rows), "mean_reward_new": statistics.fmean(new_scores),
            "mean_reward_against": statistics.fmean(old_scores), "kl_new_vs_against": statistics.fmean(kl),
            "reference": ref_row.name, "kl_new_vs_reference": kl_ref[new], "kl_against_vs_reference": kl_ref[against],
            "length_new_mean": statistics.fmean(lengths[new]),
            "length_against_mean": statistics.fmean(lengths[against]),
            "length_new_median": statistics.median(lengths[new]),
            "length_against_median": statistics.median(lengths[against]),
            "finished_new": sum(c.finished for cs in samples[new] for c in cs) / len(diffs),
            "seconds": round(time.monotonic() - started, 1), "device": choice.name, "reward_model": reward_row.name,
        }
        folder.mkdir(parents=True, exist_ok=True)
        chart = _chart(diffs, folder)
        lines = [f"# Policy evaluation: {new} vs {against}", "",
                 f"Reward model `{reward_row.name}`, {len(rows)} prompts x {k} samples each, temperature "
                 f"{temperature}.", "",
                 f"- win rate of `{new}`: **{metrics['win_rate']:.3f}** (95% {low:.3f}-{high:.3f}, ties count half)",
                 f"- mean reward: {metrics['mean_reward_new']:.3f} vs {metrics['mean_reward_against']:.3f}",
                 f"- KL({new} || {against}) per response: {metrics['kl_new_vs_against']:.3f} nats",
                 f"- KL to the reference `{ref_row.name}` per response: {new} {kl_ref[new]:.3f} nats, {against} "
                 f"{kl_ref[against]:.3f} nats (each on its own samples)",
                 f"- response tokens (mean / median): {metrics['length_new_mean']:.1f} / "
                 f"{metrics['length_new_median']} vs {metrics['length_against_mean']:.1f} / "
                 f"{metrics['length_against_median']}", "", f"![score difference]({chart.name})", "",
                 f"| prompt | {new} | reward | {against} | reward |", "|---|---|---|---|---|"]
        for i in range(min(samples_shown, len(rows))):
            j = i * k
            lines.append(f"| {_cell(conversations[i][-1]['content'], 60)} | {_cell(new_texts[j])} | "
                         f"{new_scores[j]:.2f} | {_cell(old_texts[j])} | {old_scores[j]:.2f} |")
        (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    finish_run(ws.db, run_id, "succeeded", metrics=metrics)
    return PolicyEvalResult(run_id, new, against, folder, metrics)
