"""What the loop measures beyond `rl.evaluate.evaluate_policy`, on the same samples: the loop's evaluation step
samples each policy once through one `rl.evaluate.PolicySamples` (cached in the loop folder) that `evaluate_policy`
shares, then measures here the win rate of one policy over another by the reward model or the oracle, the KL
between them, and drift: how far the reward-model scores and lengths of a new policy's samples moved from the
responses its reward model was trained on.

Win rate: sample j of prompt i from NEW against sample j of prompt i from OLD, scored by the oracle; a tie counts
one half; Wilson 95% interval. Drift, per quantity (reward score, length in words): the standardised mean shift
(mean_new - mean_train) / sd_train, the two-sample Kolmogorov-Smirnov statistic (largest gap between the two
empirical distribution functions, 0 = same, 1 = disjoint), and the share of new values outside the training range.

Forgetting (rl/forgetting.py): the mean per-token log-likelihood of a held-out set's reference answers under the new
policy against the base policy (`[loop] forgetting_set`, default the shipped general questions), with a warning past
`[loop] forgetting_threshold`.

Collapse: distinct-2 (Li et al., 2016), the share of distinct word bigrams among all word bigrams of a policy's
held-out samples, new against round 0's, with a warning when it falls below `[loop] collapse_threshold` times round
0's. A policy that answers every prompt with one template (PPO that found what the reward model prizes) has a
distinct-2 near 0 whatever its win rate.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from store.workspace import WorkspaceLike


def scores_of(scorer: Any, prompts: list[Any], samples: list[list[str]]) -> list[list[float]]:
    """Every sample's score by `scorer` (an oracle or a reward model: `.score(prompts, responses)`), shaped like
    `samples`."""
    flat = scorer.score([p.messages for p, ss in zip(prompts, samples, strict=True) for _ in ss],
                        [s for ss in samples for s in ss])
    out, i = [], 0
    for ss in samples:
        out.append(flat[i:i + len(ss)])
        i += len(ss)
    return out


def win_rate(new: list[list[float]], old: list[list[float]]) -> dict[str, float]:
    """NEW's win rate over OLD, sample by sample (ties one half), with its Wilson 95% interval."""
    from training.stats import wilson_interval

    pairs = [(a, b) for xs, ys in zip(new, old, strict=True) for a, b in zip(xs, ys, strict=True)]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs)
    low, high = wilson_interval(wins, len(pairs))
    return {"win_rate": wins / len(pairs) if pairs else 0.5, "low": low, "high": high, "n": len(pairs)}


def ks_statistic(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs of a and b."""
    if not a or not b:
        return 0.0
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    gap = 0.0
    while i < len(xs) and j < len(ys):
        value = min(xs[i], ys[j])
        while i < len(xs) and xs[i] == value:
            i += 1
        while j < len(ys) and ys[j] == value:
            j += 1
        gap = max(gap, abs(i / len(xs) - j / len(ys)))
    return gap


def shift(train: list[float], new: list[float]) -> dict[str, float]:
    """Standardised mean shift, KS statistic and share of `new` outside the range of `train`."""
    if not train or not new:
        return {"mean_train": None, "mean_new": None, "shift_sd": None, "ks": None, "outside": None}
    sd = statistics.pstdev(train) or 1.0
    low, high = min(train), max(train)
    return {"mean_train": statistics.fmean(train), "mean_new": statistics.fmean(new),
            "shift_sd": (statistics.fmean(new) - statistics.fmean(train)) / sd, "ks": ks_statistic(train, new),
            "outside": sum(not low <= x <= high for x in new) / len(new)}


def kl(sampler: Any, new: str, old: str, prompts: list[Any], samples: list[list[str]]) -> float:
    """Mean over NEW's samples of log p_new - log p_old summed over the response (rl.evaluate.sequence_kl)."""
    import statistics

    from rl.evaluate import sequence_kl

    if new == old:
        return 0.0
    (new_model, tok), (old_model, _) = sampler.model(new), sampler.model(old)
    convs = [p.messages for p, ss in zip(prompts, samples, strict=True) for _ in ss]
    values = sequence_kl(new_model, old_model, tok, convs, [s for ss in samples for s in ss], sampler.choice.device)
    return statistics.fmean(values) if values else 0.0


def drift(ws: WorkspaceLike, scorer: Any, rounds: list[int], new_scores: list[list[float]],
          new_samples: list[list[str]], max_train: int = 256) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(metrics, distributions) of the new samples against the responses of the reward model's training rounds."""
    from store.simulated import round_responses

    train = [r for rnd in rounds for r in round_responses(ws.db, rnd)]
    step = max(1, len(train) // max_train)
    train = train[::step][:max_train]
    train_scores = scorer.score([r["messages"] for r in train], [r["text"] for r in train]) if train else []
    flat_scores = [x for xs in new_scores for x in xs]
    train_len = [float(len(r["text"].split())) for r in train]
    new_len = [float(len(t.split())) for ss in new_samples for t in ss]
    metrics = {"train_responses": len(train), "new_responses": len(new_len),
               "score": shift(train_scores, flat_scores), "length": shift(train_len, new_len)}
    return metrics, {"train_scores": train_scores, "new_scores": flat_scores, "train_lengths": train_len,
                     "new_lengths": new_len}


def mean_words(samples: list[list[str]]) -> float:
    flat = [len(s.split()) for ss in samples for s in ss]
    return statistics.fmean(flat) if flat else 0.0


def distinct_bigrams(samples: list[list[str]]) -> float | None:
    """Distinct word bigrams over all word bigrams of the samples (distinct-2); None when they have no bigram."""
    seen: set[tuple[str, str]] = set()
    total = 0
    for words in (s.split() for ss in samples for s in ss):
        pairs = list(zip(words, words[1:], strict=False))  # n - 1 bigrams of n words
        total += len(pairs)
        seen.update(pairs)
    return len(seen) / total if total else None


def collapse(new: list[list[str]], base: list[list[str]], threshold: float) -> dict[str, Any]:
    """distinct-2 of the new policy's samples against round 0's, warned below `threshold` times round 0's."""
    d_new, d_base = distinct_bigrams(new), distinct_bigrams(base)
    warn = bool(threshold > 0 and d_new is not None and d_base and d_new < threshold * d_base)
    result: dict[str, Any] = {"distinct2": d_new, "distinct2_base": d_base, "threshold": threshold, "warn": warn}
    if warn:
        result["message"] = (f"the policy's held-out samples have distinct-2 {d_new:.3f} against round 0's "
                             f"{d_base:.3f} (under {threshold:g} of it): it may answer every prompt alike")
    return result


HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_general.jsonl"


def forgetting_items(ws: WorkspaceLike, config: Any) -> list[Any]:
    """The loop's held-out set for the forgetting check: `config.forgetting_set` (relative to the workspace) or the
    shipped general questions."""
    from rl.forgetting import load_heldout

    path = Path(config.forgetting_set) if config.forgetting_set else HELDOUT
    if not path.is_absolute():
        path = Path(ws.root) / path
    try:
        return load_heldout(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"[loop] forgetting_set: {e}") from e


def forgetting(ws: WorkspaceLike, config: Any, sampler: Any, new: str, base: str) -> dict[str, Any]:
    """rl.forgetting.forgetting_check of policy `new` against `base` (both through the loop's sampler)."""
    from rl.forgetting import forgetting_check

    items = forgetting_items(ws, config)
    result = forgetting_check(sampler.model(new), sampler.model(base), items, config.forgetting_threshold,
                              sampler.choice.device)
    result["set"] = config.forgetting_set or "rankloop/data/heldout_general.jsonl"
    return result
