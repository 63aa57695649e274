"""A reward loss over a whole K-way ranking with ties, as an alternative to expanding it into independent pairs.

`ranking_nll(scores, groups)` is the negative log-likelihood of an ordered list of groups (best first; a group of
2+ is a tie, as in the store's ranking JSON, `store.pairs`) under the **Davidson-Luce** model (Firth, Kosmidis &
Turner 2019, "Davidson-Luce model for multi-item choice with ties"; the `PlackettLuce` R package): Plackett-Luce
where, at each stage, the next group is chosen from the items still unranked, and a tied group is chosen together.
With worths a_i = exp(s_i) (s_i = the reward model's score), remaining set S and next group G (t = |G|):

    P(G next | S) = delta_t * (prod_{i in G} a_i)^(1/t)
                    / sum_{k=1..D} delta_k * sum_{U in S, |U|=k} (prod_{i in U} a_i)^(1/k)

    delta_1 = 1, delta_k = tie (k >= 2), D = the largest group of that ranking;
    loss = -sum over stages of log P(G next | S).

A tied group's "worth" is the geometric mean of its members' worths scaled by `tie`; the denominator is every way
the stage could have gone (any one item, or any set of up to D items tied). The inner sums are elementary
symmetric polynomials of a_i^(1/k), computed by the usual recursion in log space.

For K = 2 (two items i, j):
- no tie (D = 1): P(i > j) = a_i / (a_i + a_j) = sigmoid(s_i - s_j): pairwise Bradley-Terry exactly, so on
  rankings without ties the loss is plain Plackett-Luce and on pairs the loss TRL's RewardTrainer and the probe use;
- a tie (D = 2): P(i ~ j) = tie * sqrt(a_i a_j) / (a_i + a_j + tie * sqrt(a_i a_j)): Davidson (1970) with
  nu = tie. At equal scores a tie has probability tie / (2 + tie): the default `tie = 1.0` makes a tie as likely as
  either win there (1/3 each).

Why D per ranking and not one D for the data set: a ranking without ties then scores exactly as Plackett-Luce
(Bradley-Terry for K = 2), so switching from pairwise BT to this loss changes nothing on tie-free data beyond
treating the ranking as one choice sequence; the tie terms enter only where a reviewer actually tied. Why this
model over "ties as unknown order" (summing over orderings of a tied group): that reads a tie as missing
information, so a tie at the bottom of a ranking says nothing; Davidson-Luce reads it as "about equal", which
pulls tied scores together, and it has the Davidson tie parameter for K = 2.

Batches: `scores` and `groups` are (B, K) with K the longest ranking; `groups[b, i]` is the 0-based group index of
item i (0 = best; equal indices = tied) and -1 marks padding. Group indices must be 0..G-1 without gaps. Returns
the per-ranking loss (B,); `reduction="mean"` or `"sum"` reduces it.

Where it is used (`[reward] loss = "ranking"`, issue 17): the "rankings" snapshot (`training/snapshot.py`, rows
from `store/rankings.py`: one per counted ranking, `groups` as `group_index` gives them, an edited answer as its own
top group); the probe (`reward.probe.fit_ranking_probe`: `ranking_nll(x @ w, groups)` over (B, K, H) features plus
the L2 penalty); fine-tuning (`reward.train.ranking_loss`, the RewardTrainer subclass's `compute_loss` on batches
of whole rankings from `reward.train.RankingCollator`). Held-out accuracy stays on pairs, so the figures compare
with Bradley-Terry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_NEG = -1e30  # "log 0" that keeps gradients finite (logaddexp(-inf, -inf) has a NaN gradient)


def group_index(ranking: Sequence[Sequence[int]], ids: Sequence[int] | None = None) -> list[int]:
    """The store's ranking JSON (groups of response ids, best first) as `groups` for `ranking_nll`: each item's
    group index, in the order of `ids` (default: the order the ranking lists them)."""
    where = {rid: g for g, group in enumerate(ranking) for rid in group}
    order = [rid for group in ranking for rid in group] if ids is None else list(ids)
    missing = [rid for rid in order if rid not in where]
    if missing:
        raise ValueError(f"responses {missing} are not in the ranking {list(map(list, ranking))}")
    return [where[rid] for rid in order]


def _log_elementary(values: Any, mask: Any, k: int) -> Any:
    """log e_k(exp(values)) over the items where mask is true, along the last dimension."""
    import torch

    shape = values.shape[:-1]
    e = [torch.zeros(shape, dtype=values.dtype, device=values.device)]
    e += [torch.full(shape, _NEG, dtype=values.dtype, device=values.device) for _ in range(k)]
    for n in range(values.shape[-1]):
        v, on = values[..., n], mask[..., n]
        for j in range(k, 0, -1):  # e_j += x_n * e_{j-1}, highest first so e_{j-1} is still the old one
            e[j] = torch.where(on, torch.logaddexp(e[j], v + e[j - 1]), e[j])
    return e[k]


def ranking_nll(scores: Any, groups: Any, tie: float = 1.0, reduction: str = "none") -> Any:
    """Davidson-Luce negative log-likelihood of each ranking (see the module doc). `scores`: float (K,) or (B, K);
    `groups`: the same shape, each item's group index (0 = best, ties share one), -1 for padding."""
    import math

    import torch

    if tie <= 0:
        raise ValueError(f"tie: must be > 0, got {tie}")
    groups = torch.as_tensor(groups, device=scores.device)
    if scores.shape != groups.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and groups {tuple(groups.shape)} differ in shape")
    single = scores.dim() == 1
    if single:
        scores, groups = scores[None], groups[None]
    if scores.dtype in (torch.float16, torch.bfloat16):  # the log-space sums need float32's range and precision
        scores = scores.float()
    real = groups >= 0
    n_stages = int(groups.max().item()) + 1 if real.any() else 0
    onehot = torch.stack([groups == g for g in range(n_stages)], 1) if n_stages else real[:, None] & False  # (B,G,K)
    sizes = onehot.sum(-1)  # (B, G)
    if n_stages and (sizes[:, 1:].gt(0) & sizes[:, :-1].eq(0)).any():
        raise ValueError("groups: each ranking's group indices must run 0, 1, ... without gaps")
    largest = sizes.max(-1).values  # D per ranking
    log_tie = math.log(tie)
    loss = torch.zeros(scores.shape[0], dtype=scores.dtype, device=scores.device)
    for g in range(n_stages):
        chosen, size = onehot[:, g], sizes[:, g]
        present = size > 0
        remaining = real & (groups >= g)
        t = size.clamp(min=1).to(scores.dtype)
        numerator = (scores * chosen).sum(-1) / t + (size > 1).to(scores.dtype) * log_tie
        terms = []
        for k in range(1, int(largest.max().item()) + 1):
            term = _log_elementary(scores / k, remaining, k) + (log_tie if k > 1 else 0.0)
            terms.append(torch.where(largest >= k, term, _NEG))
        denominator = torch.logsumexp(torch.stack(terms, -1), -1)
        loss = loss + torch.where(present, denominator - numerator, 0.0)
    if single:
        loss = loss[0]
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"reduction: must be 'none', 'mean' or 'sum', got {reduction!r}")
    return loss
