"""A compact PPO loop for RLHF (InstructGPT style), independent of the workspace: `PPOLoop(config, model,
tokenizer, reward_fn, prompts).train()`. rl/ppo_run.py wires it to the workspace (run rows, reward model, lineage).

One iteration: sample one response per prompt for `rollout_batch_size` prompts; score them (reward model, minus
`missing_eos_penalty` for responses that never end); per-token rewards = -beta * KL(policy || reference) + score
at the last token; GAE; `ppo_epochs` passes of `num_minibatches` clipped policy + value updates; adapt beta.
The reference is the starting policy: with LoRA, the same weights with the adapters disabled.

Under `accelerate launch` (`state`, training.distributed.process_state, with several processes) each process
samples, scores and updates on its own share of every rollout batch (`rollout_batch_size / processes` prompts);
torch's DistributedDataParallel averages the gradients of the policy and value head, and the step's statistics
(score, KL, ...) are averaged across processes before they are logged or move the KL controller, so every process
keeps the same beta, history and checkpoints. Advantages (and rewards, with `whiten_rewards`) are whitened with
the whole rollout batch's mean and variance (all-reduced), as in one process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rl.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PolicyWithValue,
    ValueHead,
    backbone_and_head,
    checkpointed_layers,
    compute_gae,
    layers_checkpointing,
    masked_mean,
    masked_whiten,
    ppo_losses,
    score_tokens,
    token_rewards,
)
from rl.ppo_config import PPOTrainingConfig
from training.checks import COMPLETE_MARKER, check_checkpoint, check_finite
from training.hf import lean_lm_head

RewardFn = Callable[[list[list[dict[str, str]]], list[str]], list[float]]
STATE_FILE = "ppo_state.pt"


class PPOLoop:
    def __init__(self, config: PPOTrainingConfig, model: Any, tokenizer: Any, reward_fn: RewardFn,
                 prompts: list[list[dict[str, str]]], device: str = "cpu", bf16: bool = False,
                 state: Any = None, checkpointing: bool = False) -> None:
        from rl.sampling import eos_ids, prompt_ids

        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        self.rank, self.processes = (state.process_index, state.num_processes) if state is not None else (0, 1)
        self.is_main = self.rank == 0
        if config.rollout_batch_size % (self.processes * config.num_minibatches):
            raise ValueError(f"rollout_batch_size ({config.rollout_batch_size}) must be a multiple of processes "
                             f"({self.processes}) x num_minibatches ({config.num_minibatches}) under accelerate "
                             "launch: each process updates on the same number of minibatches of its share")
        self.config, self.tokenizer, self.reward_fn, self.prompts = config, tokenizer, reward_fn, prompts
        self.device, self.bf16 = device, bf16
        torch.manual_seed(config.seed)
        self.ref_model = None
        if config.lora:
            from peft import get_peft_model

            from rl.training import lora_config

            model = get_peft_model(model, lora_config(config))
        else:
            self.ref_model = copy.deepcopy(model).requires_grad_(False).to(device).eval()
        self.model = model.to(device).eval()  # eval: no dropout (the ratio must be 1 before the first update)
        backbone_and_head(self.model)  # a LoRA-wrapped LM head: said now, not at the first rollout
        lean_lm_head(device)  # on a CPU: TRL's kernel takes 1024 positions per tile (its default 4096)
        # the update's forward recomputes each decoder layer in backward instead of keeping its activations
        self.checkpointed = checkpointed_layers(self.model) if checkpointing else []
        self.value_head = ValueHead(model.config.hidden_size).to(device)
        self.scorer = PolicyWithValue(self.model, self.value_head)  # the module the loss's forward runs through
        if self.processes > 1:  # gradients averaged across processes at each backward
            from torch.nn.parallel import DistributedDataParallel

            cuda = torch.device(device).type == "cuda"
            self.scorer = DistributedDataParallel(self.scorer, device_ids=[torch.device(device)] if cuda else None)
        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, eps=1e-5)
        self.kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon) \
            if config.adaptive_kl else FixedKLController(config.init_kl_coef)
        self.stop = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop[0]
        self.encoded = [prompt_ids(tokenizer, p, config.max_prompt_length) for p in prompts]
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _autocast(self) -> Any:
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(kind, dtype=torch.bfloat16, enabled=self.bf16)

    def _score(self, model: Any, r: dict[str, Any], value_head: ValueHead | None = None,
               with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(log-probs (B, T) of the rollout `r`'s response tokens, entropy or None, values or None) without
        (B, T, V) logits (rl.ppo.score_tokens); the bench's full-logits variant overrides this."""
        with self._autocast():
            return score_tokens(model, r["seqs"], r["attn"], r["width"], r["response"], r["mask"],
                                self.config.temperature, value_head, with_entropy)

    def _reference(self) -> Any:
        return contextlib.nullcontext(self.ref_model) if self.ref_model is not None else \
            _AdaptersOff(self.model)

    def _batch_indices(self) -> list[int]:
        """This iteration's prompts: a seeded permutation per step, so a resumed run draws the same ones."""
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + self.step)
        n, b = len(self.encoded), self.config.rollout_batch_size
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-b // n))])
        return order[:b].tolist()[self.rank::self.processes]  # this process's share

    def _mean_across(self, row: dict[str, float]) -> dict[str, float]:
        """The row's values averaged over the processes (unchanged in one): every process logs, checkpoints and
        adapts beta on the same figures. The shares are equal, so the mean of the means is the batch mean."""
        if self.processes == 1:
            return row
        values = self._total(torch.tensor(list(row.values()), dtype=torch.float64, device=self.device))
        return dict(zip(row, (values / self.processes).tolist(), strict=True))

    def _total(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the processes (itself in one): whitening sees the whole rollout batch."""
        if self.processes == 1:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t

    @torch.no_grad()
    def rollout(self) -> dict[str, Any]:
        from rl.sampling import _left_pad

        c = self.config
        idx = self._batch_indices()
        ids, mask = _left_pad([self.encoded[i] for i in idx], self.pad_id)  # (B, P)
        ids, mask = ids.to(self.device), mask.to(self.device)
        width = ids.shape[1]
        torch.manual_seed(c.seed * 7919 + self.step + 1_000_003 * self.rank)
        started = time.monotonic()
        with self._autocast():
            seqs = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=c.temperature,
                                       top_k=0, top_p=1.0, max_new_tokens=c.max_new_tokens, eos_token_id=self.stop,
                                       pad_token_id=self.pad_id)  # (B, P + T)
        generate_s = time.monotonic() - started
        started = time.monotonic()
        response = seqs[:, width:]  # (B, T)
        is_eos = torch.isin(response, torch.tensor(self.stop, device=self.device))
        after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
        resp_mask = (~after_eos).long()  # (B, T): the EOS itself counts as a response token
        response = response.masked_fill(after_eos, self.pad_id)
        finished = is_eos.any(1)  # (B,)
        seqs = torch.cat([ids, response], 1)
        attn = torch.cat([mask, resp_mask], 1)  # (B, P + T)
        batch = {"seqs": seqs, "attn": attn, "width": width, "response": response, "mask": resp_mask.float()}
        logprobs, entropy, values = self._score(self.model, batch, value_head=self.value_head, with_entropy=True)
        with self._reference() as ref:
            ref_logprobs, _, _ = self._score(ref, batch)
        texts = [self.tokenizer.decode([t for t, m, e in zip(row, rm, ev, strict=True) if m and not e],
                                       skip_special_tokens=True)
                 for row, rm, ev in zip(response.tolist(), resp_mask.tolist(), is_eos.tolist(), strict=True)]
        raw = torch.tensor(self.reward_fn([self.prompts[i] for i in idx], texts), dtype=torch.float32,
                           device=self.device)  # (B,)
        scores = raw - c.missing_eos_penalty * (~finished).float()
        return {**batch, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values.float(),
                "scores": scores, "raw_scores": raw, "finished": finished, "entropy": entropy, "texts": texts,
                "generate_s": generate_s, "score_s": time.monotonic() - started}

    def train_step(self) -> dict[str, float]:
        c = self.config
        r = self.rollout()
        started = time.monotonic()
        mask = r["mask"]
        rewards, kl = token_rewards(r["scores"], r["logprobs"], r["ref_logprobs"], mask, self.kl_ctl.value)
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, total=self._total)
        advantages, returns = compute_gae(rewards, r["values"], mask, c.gamma, c.lam)
        advantages = masked_whiten(advantages, mask, total=self._total)
        g = torch.Generator().manual_seed(c.seed + self.step)
        stats: list[Any] = []
        n = len(r["scores"])  # this process's share of the rollout batch
        for _ in range(c.ppo_epochs):
            for mb in torch.randperm(n, generator=g).split(n // c.num_minibatches):
                mb = mb.to(self.device)
                with self._autocast(), layers_checkpointing(self.checkpointed):
                    logprobs, _, values = self.scorer(r["seqs"][mb], r["attn"][mb], r["width"], r["response"][mb],
                                                      mask[mb], c.temperature)
                pg_loss, vf_loss, st = ppo_losses(logprobs, r["logprobs"][mb], advantages[mb], values.float(),
                                                  r["values"][mb], returns[mb], mask[mb], c.cliprange,
                                                  c.cliprange_value)
                loss = pg_loss + c.vf_coef * vf_loss
                check_finite("the policy + value loss", loss.item(), self.step + 1)  # before it reaches the weights
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups for p in group["params"]],
                                               c.max_grad_norm)
                self.optimizer.step()
                stats.append(st)
        kl_per_seq = kl.sum(1)  # (B,)
        kl_coef = self.kl_ctl.value
        row = self._mean_across({
            "score": r["raw_scores"].mean().item(),
            "reward": (r["scores"] - kl_coef * kl_per_seq).mean().item(), "kl": kl_per_seq.mean().item(),
            "kl_coef": kl_coef, "entropy": masked_mean(r["entropy"], mask).item(),
            "policy_loss": sum(s.policy_loss for s in stats) / len(stats),
            "value_loss": sum(s.value_loss for s in stats) / len(stats),
            "clip_fraction": sum(s.clip_fraction for s in stats) / len(stats),
            "approx_kl": sum(s.approx_kl for s in stats) / len(stats),
            "response_length": mask.sum(1).mean().item(), "missing_eos": (~r["finished"]).float().mean().item(),
            "sample_s": r["generate_s"], "score_s": r["score_s"], "update_s": time.monotonic() - started,
        })
        self.kl_ctl.update(row["kl"], c.rollout_batch_size)
        self.step += 1
        row = {"step": self.step, **row, **step_times(row["sample_s"], row["score_s"], row["update_s"])}
        self.history.append(row)
        return row

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self, folder: str | Path) -> Path:
        """A checkpoint that resumes: trainable weights, value head, optimizer, beta, step, history, config."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / (STATE_FILE + ".partial")  # renamed into place when whole: a kill leaves no half file
        torch.save({"trainable": self.trainable_state(), "value_head": self.value_head.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value, "step": self.step,
                    "history": self.history, "config": self.config.to_dict()}, partial)
        partial.replace(folder / STATE_FILE)
        (folder / COMPLETE_MARKER).write_text(json.dumps({"step": self.step}), encoding="utf-8")
        return folder

    def load(self, folder: str | Path) -> None:
        check_checkpoint(Path(folder))  # a damaged file: a one-line error naming it
        state = torch.load(Path(folder) / STATE_FILE, map_location=self.device, weights_only=False)
        missing = set(self.trainable_state()) - set(state["trainable"])
        if missing:
            raise ValueError(f"{folder}: checkpoint lacks {len(missing)} trainable tensors (another config?)")
        self.model.load_state_dict(state["trainable"], strict=False)
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value, self.step, self.history = state["kl_coef"], state["step"], state["history"]

    def train(self, checkpoint_dir: Path | None = None, log: Callable[[dict[str, float]], None] | None = None,
              progress: bool = False) -> list[dict[str, float]]:
        """Run up to `max_steps` iterations (from `self.step`), checkpointing every `save_steps`."""
        bar = None
        if progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.config.max_steps, initial=self.step, desc="ppo")
        while self.step < self.config.max_steps:
            row = self.train_step()
            if not self.is_main:  # the main process logs and checkpoints (the rows are the same everywhere)
                continue
            if log is not None:
                log(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(score=f"{row['score']:.3f}", kl=f"{row['kl']:.2f}")
            if checkpoint_dir is not None and (self.step % self.config.save_steps == 0
                                               or self.step == self.config.max_steps):
                self.save(checkpoint_dir / f"checkpoint-{self.step}")
        if bar is not None:
            bar.close()
        return self.history


def step_times(sample_s: float, score_s: float, update_s: float) -> dict[str, float]:
    """Where a PPO step's time went: sampling (generate), scoring (policy and reference log-probs, values, the reward
    model) and the update (GAE and the clipped policy + value updates), in seconds and as shares of the step."""
    total = max(sample_s + score_s + update_s, 1e-9)
    return {"sample_s": round(sample_s, 3), "score_s": round(score_s, 3), "update_s": round(update_s, 3),
            "sample_share": round(sample_s / total, 3)}


class _AdaptersOff:
    """`with _AdaptersOff(peft_model) as ref:` the same model with its LoRA adapters disabled (the reference)."""

    def __init__(self, model: Any) -> None:
        self.model, self.ctx = model, None

    def __enter__(self) -> Any:
        self.ctx = self.model.disable_adapter()
        self.ctx.__enter__()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)


def last_ppo_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((p for p in run_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file()
                    and (p / COMPLETE_MARKER).is_file()),
                   key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None
