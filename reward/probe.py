"""`method = "probe"`: a frozen backbone and a linear Bradley-Terry reward on its hidden states, averaged over the
response tokens of one layer (the middle one by default).

Why: on HH harmless-base, fine-tuned MiniLM scores ~0.63 and is no better than a linear probe on its own frozen
embedding, while SmolLM2-135M-Instruct's middle layer averaged over the response carries more of the signal
(`scripts/reward_probe.py`, README "Reward models on real data"). Fitting: every train pair's two responses are
embedded once (no backward pass), the features standardized, and w minimizes the mean Bradley-Terry loss on
(chosen - rejected) plus an L2 penalty picked by k-fold cross-validation on the train pairs; the held-out pairs only
measure. Training is forward passes only, so there are no steps, checkpoints or learning rate.

A probe model folder holds the tokenizer, `rankloop-reward.json` (method "probe", the backbone's location) and
`probe.json` (layer, mean, sd, w); it scores through `ProbeScorer`, like any reward model through RewardScorer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROBE_FILE = "probe.json"


def _layer_index(n_states: int, layer: int) -> int:
    """hidden_states index for `layer`: 0 = the middle layer, k > 0 = layer k, -1 = the last."""
    n_layers = n_states - 1  # hidden_states[0] is the embeddings
    if layer == 0:
        return n_states // 2
    if not -n_layers <= layer <= n_layers:
        raise ValueError(f"probe_layer: the backbone has {n_layers} layers, got {layer}")
    return layer if layer > 0 else n_states + layer


def response_features(model: Any, tokenizer: Any, prompts: list[str], responses: list[str], max_length: int,
                      layer: int, tick: Callable[[], None] | None = None) -> Any:
    """(N, hidden) float64: mean of `layer`'s states over each response's tokens, read after the prompt. The
    sequence is the prompt's tokens then the response's, cut from the left to `max_length`; the response keeps at
    most half of it. One sequence at a time: no padding to get wrong, and a CPU gains little from batching here."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(prompts), model.config.hidden_size), dtype=np.float64)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"][:max_length // 2]
        if not response_ids:
            response_ids = [tokenizer.eos_token_id or tokenizer.pad_token_id or 0]
        ids = (prompt_ids + response_ids)[-max_length:]
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
        out[i] = states[_layer_index(len(states), layer)][0, -len(response_ids):].float().mean(0).cpu().numpy()
        if tick is not None:
            tick()
    return out


def fit_weights(diff: Any, penalty: float, seed: int) -> Any:
    """w minimizing mean BT loss on (chosen - rejected) + penalty * |w|^2 (L-BFGS, float64). Random sign flips give
    the logistic fit both labels."""
    import numpy as np
    import torch

    signs = np.random.default_rng(seed).choice([-1.0, 1.0], len(diff))
    x = torch.tensor(diff * signs[:, None], dtype=torch.float64)
    y = torch.tensor(signs > 0, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


@dataclass
class Probe:
    layer: int
    max_length: int
    mean: list[float]
    sd: list[float]
    w: list[float]
    penalty: float
    cv_accuracy: dict[str, float]

    def rewards(self, features: Any) -> list[float]:
        import numpy as np

        return (((features - np.array(self.mean)) / np.array(self.sd)) @ np.array(self.w)).tolist()


def fit_probe(chosen: Any, rejected: Any, penalties: list[float], folds: int, seed: int, layer: int,
              max_length: int) -> Probe:
    """Standardize, pick the penalty by `folds`-fold CV (accuracy; ties go to the larger penalty), refit on all."""
    import numpy as np

    both = np.concatenate([chosen, rejected])
    mean, sd = both.mean(0), both.std(0) + 1e-6
    diff = (chosen - mean) / sd - (rejected - mean) / sd
    fold = np.random.default_rng(seed).permutation(len(diff)) % folds
    cv: dict[str, float] = {}
    for penalty in sorted(penalties):
        right = [float(((diff[fold == k] @ fit_weights(diff[fold != k], penalty, seed)) > 0).mean())
                 for k in range(folds) if (fold == k).any() and (fold != k).any()]
        cv[f"{penalty:g}"] = round(sum(right) / len(right), 4) if right else 0.0
    best = max(sorted(penalties), key=lambda p: (cv[f"{p:g}"], p))
    return Probe(layer, max_length, mean.tolist(), sd.tolist(), fit_weights(diff, best, seed).tolist(), best, cv)


def load_frozen_backbone(location: str, device: str) -> Any:
    """The backbone without any head, float32, in eval mode on `device`: what a probe reads its features from."""
    import torch
    from transformers import AutoModel

    from reward.backbone import _quiet_loading

    with _quiet_loading():
        return AutoModel.from_pretrained(location, dtype=torch.float32).to(device).eval()


def save_probe(folder: Path, probe: Probe) -> None:
    Path(folder, PROBE_FILE).write_text(json.dumps(asdict(probe)), encoding="utf-8")


class ProbeScorer:
    """A saved probe: its backbone (frozen, from the base location) and the linear reward on its features."""

    def __init__(self, folder: str | Path, meta: dict[str, Any], device: str = "cpu"):
        from transformers import AutoTokenizer

        raw = json.loads(Path(folder, PROBE_FILE).read_text(encoding="utf-8"))
        self.probe = Probe(**raw)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = load_frozen_backbone(meta["base"], device)

    def score_strings(self, prompts: list[str], responses: list[str]) -> list[float]:
        features = response_features(self.model, self.tokenizer, prompts, responses, self.probe.max_length,
                                     self.probe.layer)
        return self.probe.rewards(features)
