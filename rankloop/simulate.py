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


# --- calibration: fit noise and spread to the people's own agreement ---------------------------------------------

CALIBRATE_KIND = "simulate_calibrate"  # run rows of `rankloop simulate --calibrate`; the loop reads the newest
SPREADS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_CALIBRATION_COMPARISONS = 2000  # a seeded sample above this: the fit's cost stays bounded


@dataclass
class Calibration:
    run_id: int
    oracle: str
    noise_model: str
    reviewers: int
    noise: float
    spread: float
    comparisons: int  # comparisons two or more people ranked, that the fit used
    people: int
    human_agreement: float  # people vs people (pairwise, ties a relation)
    simulated_agreement: float  # simulated vs simulated, at the fitted values
    simulated_human_agreement: float  # simulated vs people, at the fitted values
    human_spread: float  # sd over people of each one's agreement with the others
    simulated_spread: float  # the same over the simulated reviewers
    loss: float
    seconds: float


def _pool(pairs: list[tuple[dict[int, int], dict[int, int]]]) -> float:
    from store.agreement import pair_agreement

    same = total = 0
    for a, b in pairs:
        s, t = pair_agreement(a, b)
        same, total = same + s, total + t
    return same / total if total else 0.0


def _per_reviewer_sd(rankings: list[dict[str, dict[int, int]]]) -> float:
    """sd over reviewers of each reviewer's pooled agreement with the others on the same comparisons."""
    import statistics

    from store.agreement import pair_agreement

    tally: dict[str, list[int]] = {}
    for ranks in rankings:
        for a in ranks:
            for b in ranks:
                if a != b:
                    s, t = pair_agreement(ranks[a], ranks[b])
                    got = tally.setdefault(a, [0, 0])
                    got[0], got[1] = got[0] + s, got[1] + t
    shares = [s / t for s, t in tally.values() if t]
    return statistics.pstdev(shares) if len(shares) >= 2 else 0.0


def _noise_grid(noise_model: str, scores: list[list[float]]) -> list[float]:
    """Candidate base noises: flip, probabilities 0..1; gumbel, 0 and 40 steps from 1/50 to 20 times the median
    score gap within a comparison (the oracle's own units)."""
    import statistics

    if noise_model == "flip":
        return [i / 40 for i in range(41)]
    gaps = [abs(a - b) for s in scores for i, a in enumerate(s) for b in s[i + 1:] if a != b]
    unit = statistics.median(gaps) if gaps else 1.0
    return [0.0] + [unit * 0.02 * 1000 ** (i / 39) for i in range(40)]


def calibrate(ws: WorkspaceLike, config: SimulationConfig, *, oracle: Any = None, spreads: tuple[float, ...] = SPREADS,
              repeats: int = 8, log: Callable[[str], None] | None = None) -> Calibration:
    """Fit `noise` and `spread` of `config.reviewers` simulated reviewers (its oracle, noise model and seed) so that,
    on the comparisons two or more people ranked (`config.round`'s, or all), simulated vs simulated and simulated vs
    people agreement both match people vs people, and the sd of each reviewer's agreement with the others matches
    the people's: a grid over (noise, spread), then a finer grid around the best noise; every candidate is drawn
    with the same seeded draws, `repeats` draws per reviewer and comparison (`_Simulated`). The result is a run
    row of kind `simulate_calibrate` (`latest_calibration`), which `loop` reuses."""
    from rankloop.oracles import resolve_oracle
    from store.agreement import ranks_of
    from store.runs import finish_run, start_run
    from store.simulated import people_judged
    from training.runs import fail_run

    started = time.monotonic()
    oracle = oracle or resolve_oracle(config.oracle, ws.db)
    items = people_judged(ws.db, config.round)
    if not items:
        where = "" if config.round is None else f" in round {config.round}"
        raise ValueError(f"calibration needs comparisons that two or more people ranked{where}; none found: have "
                         "people rank some comparisons twice (reviewers per comparison above 1) or import them")
    if len(items) > MAX_CALIBRATION_COMPARISONS:
        items = sorted(random.Random(config.seed).sample(items, MAX_CALIBRATION_COMPARISONS),
                       key=lambda x: x["comparison_id"])
    run_id = start_run(ws.db, CALIBRATE_KIND, {**asdict(config), "spreads": list(spreads)},
                       {"round": config.round, "comparisons": len(items)})
    try:
        flat = [(item["messages"], text) for item in items for _, text in item["responses"]]
        values = oracle.score([m for m, _ in flat], [t for _, t in flat])
        it = iter(values)
        scores = [[float(next(it)) for _ in item["responses"]] for item in items]
        people = [{name: ranks_of(r) for name, r in item["rankings"].items()} for item in items]
        human = _pool([(r[a], r[b]) for r in people for a in r for b in r if a < b])
        human_sd = _per_reviewer_sd(people)
        measure = _Simulated(config, items, scores, people, repeats)

        grid = _noise_grid(config.noise_model, scores)

        def fit(noise: float, spread: float) -> tuple[float, float, float, float]:
            ss, sh, sd = measure(noise, spread)
            if config.reviewers == 1:  # one reviewer: nothing among the simulated ones to match
                ss, sd = human, human_sd
            return (ss - human) ** 2 + (sh - human) ** 2 + (sd - human_sd) ** 2, ss, sh, sd

        tried = {(n, sp): fit(n, sp) for n in grid for sp in spreads}
        best_noise, best_spread = min(tried, key=lambda k: (tried[k][0], k[1], k[0]))
        at = grid.index(best_noise)
        low, high = grid[max(at - 1, 0)], grid[min(at + 1, len(grid) - 1)]
        for step in range(1, 20):  # the finer grid between the best noise's neighbours
            n = low + (high - low) * step / 20
            tried.setdefault((n, best_spread), fit(n, best_spread))
        best_noise, best_spread = min(tried, key=lambda k: (tried[k][0], k[1], k[0]))
        loss, ss, sh, sd = tried[best_noise, best_spread]
        if log is not None:
            log(f"{len(tried)} candidates on {len(items)} comparisons")
        result = Calibration(run_id, oracle.spec, config.noise_model, config.reviewers, round(best_noise, 6),
                             best_spread, len(items), len({n for r in people for n in r}), human, ss, sh, human_sd,
                             sd, loss, round(time.monotonic() - started, 2))
    except BaseException as e:
        fail_run(ws.db, run_id, e)
        raise
    finish_run(ws.db, run_id, "succeeded", metrics={k: v for k, v in asdict(result).items() if k != "run_id"})
    return result


class _Simulated:
    """Agreement of `config.reviewers` simulated reviewers on the people's comparisons for a (noise, spread), as
    `rank_by_scores` ranks (same noise models, same per-reviewer noise), vectorised: the Gumbel draws, flip draws
    and random permutations are drawn once (numpy, seeded) and shared by every candidate. Pairs are compared as
    `store.agreement.pair_agreement` does (the sign of each response pair, a tie its own relation)."""

    def __init__(self, config: SimulationConfig, items: list[dict[str, Any]], scores: list[list[float]],
                 people: list[dict[str, dict[int, int]]], repeats: int):
        import numpy as np

        self.config, self.n = config, config.reviewers
        rng = np.random.default_rng(config.seed)
        self.groups = []
        by_k: dict[int, list[int]] = {}
        for index, s in enumerate(scores):
            by_k.setdefault(len(s), []).append(index)
        for k, members in sorted(by_k.items()):
            i, j = np.triu_indices(k, 1)
            score = np.array([scores[m] for m in members])  # (C, k)
            most = max(len(people[m]) for m in members)
            human = np.zeros((len(members), most, len(i)))
            mask = np.zeros((len(members), most))
            for row, m in enumerate(members):
                rids = [rid for rid, _ in items[m]["responses"]]
                for col, ranks in enumerate(people[m].values()):
                    r = np.array([ranks[x] for x in rids], dtype=float)
                    human[row, col], mask[row, col] = np.sign(r[i] - r[j]), 1.0
            shape = (repeats, len(members), self.n, k)
            self.groups.append({
                "i": i, "j": j, "exact": np.sign(score[:, j] - score[:, i]), "score": score, "human": human,
                "mask": mask, "gumbel": rng.gumbel(size=shape), "flip": rng.random(shape[:3]),
                "perm": np.argsort(rng.random(shape), axis=-1).astype(float)})

    def __call__(self, noise: float, spread: float) -> tuple[float, float, float]:
        """(simulated vs simulated, simulated vs people, sd over reviewers of agreement with the others)."""
        import numpy as np

        trial = SimulationConfig(self.config.oracle, self.n, noise, self.config.noise_model, spread)
        noises = np.array([trial.reviewer_noise(r) for r in range(self.n)])
        ss = ss_total = sh = sh_total = 0.0
        mine = np.zeros(self.n)
        mine_total = 0.0
        for g in self.groups:
            i, j = g["i"], g["j"]
            if self.config.noise_model == "gumbel":
                seen = g["score"][None, :, None, :] + noises[None, None, :, None] * g["gumbel"]
                signs = np.sign(seen[..., j] - seen[..., i])  # (R, C, N, P): higher perceived = better
            else:
                perm = np.sign(g["perm"][..., i] - g["perm"][..., j])
                flipped = (g["flip"] < noises[None, None, :])[..., None]
                signs = np.where(flipped, perm, np.broadcast_to(g["exact"][None, :, None, :], perm.shape))
            if self.n > 1:
                same = (signs[:, :, :, None, :] == signs[:, :, None, :, :]).sum(axis=(0, 1, 4))  # (N, N)
                np.fill_diagonal(same, 0)
                ss += same.sum() / 2
                ss_total += self.n * (self.n - 1) / 2 * signs.shape[0] * signs.shape[1] * signs.shape[3]
                mine += same.sum(axis=1)
                mine_total += (self.n - 1) * signs.shape[0] * signs.shape[1] * signs.shape[3]
            agree = signs[:, :, :, None, :] == g["human"][None, :, None, :, :]  # (R, C, N, H, P)
            sh += (agree * g["mask"][None, :, None, :, None]).sum()
            sh_total += signs.shape[0] * self.n * g["mask"].sum() * len(i)
        sd = float(np.std(mine / mine_total)) if self.n > 1 and mine_total else 0.0
        return (ss / ss_total if ss_total else 0.0), (sh / sh_total if sh_total else 0.0), sd


def latest_calibration(db: Any) -> dict[str, Any] | None:
    """The newest succeeded calibration's metrics (noise, spread, noise_model, reviewers, ...) with its run id."""
    from store.runs import list_runs

    done = [r for r in list_runs(db, kind=CALIBRATE_KIND) if r.status == "succeeded"]
    return {**done[-1].metrics, "run_id": done[-1].id} if done else None


CALIBRATED_FIELDS = ("noise", "spread", "noise_model")


def with_calibration(db: Any, config: Any, asked: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """`config` (a LoopConfig) with the newest calibration's noise, spread and noise model, except the ones `asked`
    names (flags and --set win); unchanged, with None, when there is no calibration, or when `asked` names another
    noise model (its noise is in other units) or both noise and spread."""
    from dataclasses import replace

    fitted = latest_calibration(db)
    if fitted is None or asked.get("noise_model", fitted["noise_model"]) != fitted["noise_model"]:
        return config, None
    changes = {k: fitted[k] for k in CALIBRATED_FIELDS if k not in asked}
    if "noise" in asked and "spread" in asked:
        return config, None
    return replace(config, **changes), fitted
