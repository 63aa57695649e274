"""Simulated reviewers: rank pending comparisons as reviewers would, through the app's own queue functions.

`simulate_reviewers(ws, SimulationConfig(oracle=...))` creates reviewers `sim-1..sim-N` (kind 'simulated', no
password: they cannot log in) and lets each take items from the queue (`store.queue.next_item`) and answer them
(`store.queue.submit_and_next`, source 'simulated'), so the queue's rules hold unchanged: a comparison gets its
`required_reviewers` distinct reviewers and nobody sees the same comparison twice; leases and idempotency keys
make a rerun after a crash continue, never duplicate. Every later step (exports, reward training, agreement)
sees ordinary judgments.

How a reviewer ranks a comparison of responses with oracle scores s_1..s_K:

- noise 0: by score, best first; equal scores share a group (a tie).
- `gumbel` (default): by s_i + noise * G_i with G_i ~ Gumbel(0, 1) drawn per reviewer, comparison and response.
  That is a Plackett-Luce ranking, so each pair follows Bradley-Terry: P(i before j) = sigmoid((s_i - s_j) / noise);
  `noise` is in the oracle's score units.
- `flip`: with probability `noise` the reviewer ranks the comparison at random (a uniform permutation), otherwise
  exactly; a pair is then right with probability 1 - noise / 2.
- Per-reviewer disagreement: reviewer i of N gets noise * (1 + spread * u_i), u_i evenly spaced in [-1, 1]
  (so `spread` 0.5 with noise 0.2 gives 0.1 .. 0.3). The draws are seeded by (seed, reviewer, comparison):
  a rerun gives the same rankings.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from store.workspace import WorkspaceLike

NOISE_MODELS = ("gumbel", "flip")
RUN_KIND = "simulate"
SOURCE = "simulated"


@dataclass
class SimulationConfig:
    oracle: str  # see rankloop.oracles
    reviewers: int = 3  # simulated reviewers sim-1..sim-N
    noise: float = 0.0  # gumbel: temperature in score units; flip: probability of a random ranking
    noise_model: str = "gumbel"
    spread: float = 0.0  # per-reviewer disagreement: noise_i = noise * (1 + spread * u_i), u_i in [-1, 1]
    round: int | None = None  # only this round's comparisons (None: every pending comparison)
    prefix: str = "sim-"
    seed: int = 0
    max_judgments: int = 0  # stop after this many (0: until the queue is empty); bounds a run

    def __post_init__(self) -> None:
        if isinstance(self.reviewers, bool) or not isinstance(self.reviewers, int) or not 1 <= self.reviewers <= 50:
            raise ValueError(f"reviewers: must be between 1 and 50, got {self.reviewers!r}")
        if not isinstance(self.noise, int | float) or self.noise < 0:
            raise ValueError(f"noise: must be >= 0, got {self.noise!r}")
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise model: must be one of {', '.join(NOISE_MODELS)}, got {self.noise_model!r}")
        if self.noise_model == "flip" and self.noise > 1:
            raise ValueError(f"noise: a flip probability must be in [0, 1], got {self.noise}")
        if not isinstance(self.spread, int | float) or not 0 <= self.spread <= 1:
            raise ValueError(f"spread: must be in [0, 1], got {self.spread!r}")
        if self.round is not None and self.round < 0:
            raise ValueError(f"round: must be >= 0, got {self.round}")
        if not self.prefix.strip():
            raise ValueError("prefix: must not be empty")
        if self.max_judgments < 0:
            raise ValueError("max_judgments: must be >= 0")

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.reviewers + 1)]

    def reviewer_noise(self, index: int) -> float:
        """Noise of reviewer `index` (0-based): the base noise spread evenly by `spread`."""
        u = 0.0 if self.reviewers == 1 else -1.0 + 2.0 * index / (self.reviewers - 1)
        value = self.noise * (1.0 + self.spread * u)
        return min(value, 1.0) if self.noise_model == "flip" else value


@dataclass
class SimulationResult:
    run_id: int
    oracle: str
    reviewers: list[str]
    judgments: int
    comparisons_left: int  # still incomplete after the run (more reviewers needed than simulated, or the cap)
    seconds: float
    unknown_responses: int  # pairs oracle: responses its file did not know (scored 0)


def rank_by_scores(response_ids: list[int], scores: list[float], noise: float, noise_model: str,
                   rng: random.Random) -> list[list[int]]:
    """A ranking (groups best first; equal perceived scores tie) as one reviewer perceives the scores."""
    import math

    if noise > 0 and noise_model == "flip" and rng.random() < noise:
        order = list(response_ids)
        rng.shuffle(order)
        return [[r] for r in order]
    perceived = list(scores)
    if noise > 0 and noise_model == "gumbel":
        perceived = [s + noise * -math.log(-math.log(max(rng.random(), 1e-300))) for s in scores]
    groups: dict[float, list[int]] = {}
    for rid, value in sorted(zip(response_ids, perceived, strict=True), key=lambda x: (-x[1], x[0])):
        groups.setdefault(value, []).append(rid)
    return list(groups.values())


def simulate_reviewers(ws: WorkspaceLike, config: SimulationConfig, *, oracle: Any = None,
                       progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Let N simulated reviewers work through the queue (one round's or all) with the oracle's judgment."""
    from rankloop.oracles import resolve_oracle
    from store.queue import Answer, next_item, release, submit_and_next
    from store.runs import finish_run, start_run
    from store.simulated import round_progress, simulated_reviewers
    from training.runs import fail_run

    oracle = oracle or resolve_oracle(config.oracle, ws.db)
    names = config.names
    ids = simulated_reviewers(ws.db, names)
    before = round_progress(ws.db, config.round)
    total = before["judgments_needed"] - before["judgments_given"]
    if config.max_judgments:
        total = min(total, config.max_judgments)
    run_id = start_run(ws.db, RUN_KIND, {**asdict(config), "reviewer_names": names},
                       {"round": config.round, "before": before})
    started = time.monotonic()
    done = 0
    cache: dict[int, float] = {}  # response id -> oracle score (reviewers share the oracle)
    try:
        current = {name: next_item(ws.db, ids[name], config.round) for name in names}
        while any(item is not None for item in current.values()):
            for index, name in enumerate(names):
                item = current[name]
                if item is None:
                    continue
                if config.max_judgments and done >= config.max_judgments:  # give the held items back
                    for n, held in current.items():
                        if held is not None:
                            release(ws.db, held.lease_id, ids[n])
                    current = {n: None for n in names}
                    break
                rids = [rid for rid, _ in item.responses]
                todo = [(rid, text) for rid, text in item.responses if rid not in cache]
                if todo:
                    values = oracle.score([item.messages] * len(todo), [text for _, text in todo])
                    cache.update({rid: v for (rid, _), v in zip(todo, values, strict=True)})
                rng = random.Random(f"{config.seed}:{name}:{item.comparison_id}")
                ranking = rank_by_scores(sorted(rids), [cache[r] for r in sorted(rids)],
                                         config.reviewer_noise(index), config.noise_model, rng)
                _, current[name] = submit_and_next(ws.db, item.lease_id, ids[name], name, Answer(ranking=ranking),
                                                   source=SOURCE, round=config.round)
                done += 1
                if progress is not None:
                    progress(done, max(total, done))
    except BaseException as e:
        fail_run(ws.db, run_id, e)
        raise
    after = round_progress(ws.db, config.round)
    result = SimulationResult(run_id, oracle.spec, names, done, after["comparisons"] - after["complete"],
                              round(time.monotonic() - started, 2), oracle.unknown)
    finish_run(ws.db, run_id, "succeeded", metrics={
        "judgments": done, "comparisons_left": result.comparisons_left, "seconds": result.seconds,
        "unknown_responses": oracle.unknown, "after": after})
    return result
