"""The pieces of InstructGPT-style PPO, as plain torch functions (the loop is in rl/ppo_train.py).

Following Ziegler et al. 2019 and Huang et al. 2024 ("The N+ implementation details of RLHF with PPO"):
per-token reward = -kl_coef * (log pi(a|s) - log pi_ref(a|s)), plus the reward model's score on the last response
token; an adaptive KL coefficient; optional reward whitening; GAE; clipped policy and value losses.

Shapes: B = sequences in a batch, T = response tokens (right padded); `mask` (B, T) is 1 on real response tokens
(the EOS included) and 0 on padding after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class AdaptiveKLController:
    """Ziegler et al. 2019: beta_{t+1} = beta_t * (1 + K * e_t * n / horizon), e_t = clip(KL_t / target - 1, ±0.2).

    `update(kl, n)` is called once per rollout batch with the batch's mean KL (summed over a response's tokens)
    and n = the number of sequences in the batch.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (the unbiased variance, as TRL); with `shift_mean=False` the
    mean is added back (reward whitening keeps the reward's sign). `total` sums a tensor over the processes that
    share a batch (an all-reduce): the mean and variance are then the whole batch's, not this process's share's."""
    total = total or (lambda t: t)
    sums = total(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]))
    n = sums[1]
    mean = sums[0] / n.clamp(min=1)
    var = total(((x - mean) ** 2 * mask).sum()) / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (B, T), kl (B, T)): -kl_coef * (logp - ref_logp) per token, plus the score (B,) on each response's
    last real token."""
    kl = (logprobs - ref_logprobs) * mask  # (B, T): the k1 estimator, unbiased for KL(pi || ref)
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token (the EOS when there is one)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, T): A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t,
    with V = 0 after the last real token (the episode ends there)."""
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0.0)
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class LossStats:
    policy_loss: float
    value_loss: float
    clip_fraction: float
    value_clip_fraction: float
    approx_kl: float


def ppo_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
               old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
               cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor, LossStats]:
    """Clipped surrogate policy loss and clipped value loss (both masked means over tokens), all inputs (B, T)."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.max(pg1, pg2), mask)
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1, vf2 = (values - returns) ** 2, (clipped_values - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    with torch.no_grad():
        stats = LossStats(
            policy_loss=policy_loss.item(), value_loss=value_loss.item(),
            clip_fraction=masked_mean((pg2 > pg1).float(), mask).item(),
            value_clip_fraction=masked_mean((vf2 > vf1).float(), mask).item(),
            approx_kl=masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask).item(),
        )
    return policy_loss, value_loss, stats


class ValueHead(nn.Module):
    """A scalar value per position from the policy's last hidden state: (B, L, H) -> (B, L)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (B, T) of `tokens` (B, T) under full logits (B, T, V) at `temperature`, entropy (B, T)).

    The plain full-vocabulary form: the reference `token_logprobs` is checked against (tests) and the old path the
    memory benchmark (scripts/bench/ppo_memory.py) compares with; the loop itself never builds (B, T, V) logits."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


GPU_VOCAB_CHUNK = 32768  # vocabulary columns per tile off the CPU: TRL's fused LM head's width


def vocab_chunk(device: torch.device) -> int:
    """Vocabulary columns per projection tile of TRL's kernel: on a CPU rankloop's width for TRL's fused head
    (training.hf.CPU_HEAD_VOCAB, whose `lean_lm_head` also sets the positions per tile), elsewhere TRL's."""
    from training import hf

    return hf.CPU_HEAD_VOCAB if device.type == "cpu" else GPU_VOCAB_CHUNK


def backbone_and_head(model: Any) -> tuple[nn.Module, nn.Module]:
    """(the transformer body that returns `last_hidden_state`, the LM head) of a causal LM, through a PEFT wrapper
    (its LoRA layers sit inside the body, so `disable_adapter()` still gives the reference)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.config.get_text_config()
    scaled = {k: getattr(text, k, None) for k in ("final_logit_softcapping", "logit_scale", "output_multiplier",
                                                  "lm_head_multiplier", "logits_scaling")}
    scaled = {k: v for k, v in scaled.items() if v is not None and v != 1.0}
    if scaled:  # the chunked kernel applies the temperature only: its log-probs would be of other logits
        raise ValueError(f"PPO scores tokens as head(hidden) / temperature, but this {text.model_type} policy "
                         f"transforms its logits ({', '.join(f'{k}={v}' for k, v in scaled.items())}); "
                         "such policies are not supported by `train ppo` yet (use DPO, KTO or --algo rloo|grpo)")
    head = base.get_output_embeddings()
    if type(head) is not nn.Linear:
        raise ValueError(f"PPO scores tokens from the LM head's weight, but the head is a {type(head).__name__} "
                         "(LoRA on the LM head? leave it out of lora_target_modules)")
    return base.base_model, head


def token_logprobs(hidden: torch.Tensor, head: nn.Linear, tokens: torch.Tensor, mask: torch.Tensor,
                   temperature: float, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, T) of `tokens` under `head(hidden) / temperature`, entropy (B, T) or None), 0 where `mask` is 0.

    TRL's chunked kernel (trl.kernels.ChunkedLogProbFunction, what `add_fused_lm_head` runs) projects the masked
    positions through the head tile by tile with an online log-sum-exp and recomputes the tiles in backward, so no
    (B, T, V) logits exist, forward or backward; gradients reach `hidden` and the head's weight."""
    from trl.kernels import ChunkedLogProbFunction

    keep = mask.bool()
    logp, entropy, *_ = ChunkedLogProbFunction.apply(
        hidden[keep], head.weight, head.bias, tokens[keep], temperature, vocab_chunk(hidden.device), None, 1.0,
        ("entropy",) if with_entropy else ())
    # masked_scatter keeps the result connected to the graph even when nothing is kept
    logp = logp.new_zeros(keep.shape).masked_scatter(keep, logp)
    if entropy is not None:
        entropy = entropy.new_zeros(keep.shape).masked_scatter(keep, entropy)
    return logp, entropy


def checkpointed_layers(model: Any) -> list[nn.Module]:
    """Turn on activation checkpointing in the policy's decoder layers (HF's, use_reentrant=False: LoRA's gradients
    need no input that requires grad) and return those layers; [] when the model has none of HF's
    GradientCheckpointingLayer (then it trains without checkpointing)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        return []
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before the rename
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


@contextlib.contextmanager
def layers_checkpointing(layers: list[nn.Module]) -> Iterator[None]:
    """The update's forward with those layers checkpointed while the policy stays in eval mode: HF checkpoints a
    layer only when that layer's own `training` flag is set, so only the layers' flags are set (not recursively):
    attention dropout and the rest stay in eval mode, the log-probs are the rollout's, the first ratio stays 1."""
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m in layers:
            m.training = False


class PolicyWithValue(nn.Module):
    """The policy and its value head as one module, so one forward gives what the PPO loss needs and one
    DistributedDataParallel wrapper (under `accelerate launch`) averages the gradients of both."""

    def __init__(self, policy: Any, value_head: ValueHead) -> None:
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, seqs: torch.Tensor, attn: torch.Tensor, width: int, tokens: torch.Tensor, mask: torch.Tensor,
                temperature: float, with_values: bool = True,
                with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(log-probs (B, T), entropy (B, T) or None, values (B, T) or None) of the response `tokens` (B, T) that
        follow the `width` prompt columns of `seqs` (B, width + T)."""
        return score_tokens(self.policy, seqs, attn, width, tokens, mask, temperature,
                            self.value_head if with_values else None, with_entropy)


def score_tokens(model: Any, seqs: torch.Tensor, attn: torch.Tensor, width: int, tokens: torch.Tensor,
                 mask: torch.Tensor, temperature: float, value_head: ValueHead | None = None,
                 with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`PolicyWithValue.forward` for any causal LM (the reference too): the body once for hidden states, then the
    head in tiles for the response tokens' log-probs; the value head reads the same hidden states."""
    body, head = backbone_and_head(model)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # (B, P + T): left padding shifts positions
    hidden = body(input_ids=seqs, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    hidden = hidden[:, width - 1:-1]  # position t predicts token t + 1
    logp, entropy = token_logprobs(hidden, head, tokens, mask, temperature, with_entropy)
    return logp, entropy, value_head(hidden) if value_head is not None else None
