"""Scoring text with a reward model: a Python API for PPO (`RewardScorer`), and batch scoring of the workspace's
responses (`score_responses`), which also puts the comparisons the model is least sure of first in the queue.

Priority from uncertainty: for a comparison of K candidates with scores s, sorted, the smallest gap g between
neighbours is where the model is least sure of the ranking. The model's probability of getting that pair's order
wrong is sigmoid(-g), so priority = 2 * sigmoid(-g): 1.0 for a tie, towards 0 for a confident ranking. The queue
serves higher priority first across rounds, each round of age worth 0.5 of priority (store.queue's doc);
`rl.rounds.next_round` (`round next`, each loop round) scores every new round with the newest reward model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward.backbone import load_reward_model, read_meta
from reward.data import encode, prompt_string
from store.workspace import WorkspaceLike


def score_texts(model: Any, tokenizer: Any, prompts: list[str], responses: list[str], max_length: int,
                append_eos: bool, batch_size: int = 16, pair: bool = False) -> list[float]:
    """One scalar per (prompt, response), batched by length (least padding), in the input order."""
    import torch

    ids = encode(tokenizer, prompts, responses, max_length, append_eos, pair)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    scores = [0.0] * len(ids)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [ids[i] for i in order[start:start + batch_size]]
            width = max(len(x) for x in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, x in enumerate(batch):  # right padding: decoders read the last non-pad token
                input_ids[row, :len(x)] = torch.tensor(x)
                mask[row, :len(x)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # (B, 1)
            for i, value in zip(order[start:start + batch_size], logits[:, 0].float().tolist(), strict=True):
                scores[i] = value
    return scores


class RewardScorer:
    """A saved reward model, ready to score text: `RewardScorer(folder).score(prompts, responses)`.

    A prompt is a string (used as is, e.g. an HH transcript ending in "Assistant:") or a list of chat messages
    (rendered with the tokenizer's chat template, as in training).
    """

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 16):
        import torch

        from training.device import resolve_device

        self.path = Path(path)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.probe = None
        meta = read_meta(self.path)
        if meta["method"] == "probe":
            from reward.probe import ProbeScorer

            self.probe = ProbeScorer(self.path, meta, self.device)
            self.model, self.tokenizer, self.meta = self.probe.model, self.probe.tokenizer, meta
            return
        dtype = torch.bfloat16 if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
        self.model, self.tokenizer, self.meta = load_reward_model(self.path, self.device, dtype)

    @classmethod
    def from_row(cls, row: Any, device: str | None = None, batch_size: int = 16) -> RewardScorer:
        """From a `store.models.ModelRow` of kind 'reward'."""
        folder = row.path or row.adapter_path
        if row.kind != "reward" or not folder:
            raise ValueError(f"model {row.name!r} is not a trained reward model (kind {row.kind})")
        return cls(folder, device=device, batch_size=batch_size)

    def score(self, prompts: list[str | list[dict[str, str]]], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [prompt_string(p, None, self.tokenizer) if isinstance(p, str) else
                 prompt_string(None, p, self.tokenizer) for p in prompts]
        return self.score_strings(texts, list(responses))

    @property
    def pair(self) -> bool:
        """Whether prompt and response are encoded as a pair (response-mean pooling, reward.pooling)."""
        return self.meta.get("pooling", "own") == "response_mean"

    def score_pairs(self, pairs: Any) -> tuple[list[float], list[float]]:
        """(chosen scores, rejected scores) of a pairs frame (prompt_text / prompt_messages, chosen, rejected)."""
        prompts = [prompt_string(t, m, self.tokenizer) for t, m in zip(pairs["prompt_text"], pairs["prompt_messages"],
                                                                       strict=True)]
        chosen, rejected = [str(x) for x in pairs["chosen"]], [str(x) for x in pairs["rejected"]]
        if self.probe is not None:
            return self.probe.score_pairs(prompts, chosen, rejected)
        return self.score_strings(prompts, chosen), self.score_strings(prompts, rejected)

    def score_strings(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Scores of (prompt, response) with the prompts already rendered as text."""
        if self.probe is not None:
            return self.probe.score_strings(prompts, responses)
        return score_texts(self.model, self.tokenizer, prompts, responses, int(self.meta["max_length"]),
                           bool(self.meta["append_eos"]), self.batch_size, self.pair)


def uncertainty_priority(scores: list[float]) -> float:
    """2 * sigmoid(-smallest gap between neighbouring scores): 1.0 when two candidates tie."""
    ordered = sorted(scores)
    gap = min((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=math.inf)
    return 0.0 if math.isinf(gap) else 2.0 / (1.0 + math.exp(min(gap, 700.0)))


@dataclass
class ScoreResult:
    model: str
    responses: int
    comparisons: int  # whose priority was set (0 when priorities were left alone)
    seconds: float
    responses_per_s: float
    scope: str = "all"  # "pending", "all" or "round N": which comparisons' candidates were scored
    in_scope: int = 0  # comparisons in that scope


def score_responses(ws: WorkspaceLike, model: str, round: int | None = None, batch_size: int = 16,
                    set_priority: bool = True, device: str | None = None, actor: str = "cli",
                    pending: bool = False) -> ScoreResult:
    """Score every response in the comparisons of `round` (all rounds when None; with `pending`, only comparisons
    that still need reviewers) with the reward model `model`, store the scores per response and model, and set
    each of those comparisons' priority from the model's uncertainty."""
    from store.models import get_model
    from store.scores import comparisons_to_prioritise, responses_to_score, save_scores

    row = get_model(ws.db, model)
    scope = f"round {round}" if round is not None else "pending" if pending else "all"
    frame = responses_to_score(ws.db, round, pending)  # read, close: the model loads and scores without the file held
    comparisons = comparisons_to_prioritise(ws.db, round, pending)
    started = time.monotonic()
    if frame.empty:
        return ScoreResult(row.name, 0, 0, 0.0, 0.0, scope, len(comparisons))
    scorer = RewardScorer.from_row(row, device=device, batch_size=batch_size)
    prompts = [prompt_string(t, m, scorer.tokenizer) for t, m in zip(frame["prompt_text"], frame["prompt_messages"],
                                                                     strict=True)]
    values = scorer.score_strings(prompts, list(frame["text"]))
    by_response = dict(zip(frame["response_id"].astype(int), values, strict=True))
    priorities = {cid: uncertainty_priority([by_response[r] for r in rids if r in by_response])
                  for cid, rids in comparisons} if set_priority else {}
    save_scores(ws.db, row.id, by_response, priorities, actor=actor)
    seconds = time.monotonic() - started
    return ScoreResult(row.name, len(by_response), len(priorities), seconds, len(by_response) / max(seconds, 1e-9),
                       scope, len(comparisons))
