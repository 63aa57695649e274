"""`next_round(ws)`: sample candidates from the newest policy for prompts that have none yet and queue them as the
next round, with a run row that records the lineage: round -> policy -> its training run -> reward model and data
snapshot -> judgments. With `mix_previous`, one candidate in each comparison comes from the policy's parent, so
reviewers compare versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl.config import RoundConfig
from store.workspace import WorkspaceLike

RUN_KIND = "round"


@dataclass
class RoundResult:
    round: int
    policy: str
    previous: str | None
    run_id: int
    comparisons: int
    responses: int
    comparison_ids: list[int]
    lineage: dict[str, Any]


def lineage_of(db: Any, policy: Any) -> dict[str, Any]:
    """What made `policy`: its parent, training run (kind, data snapshot) and, for PPO, the reward model."""
    from store.runs import get_run

    out: dict[str, Any] = {"policy_id": policy.id, "policy": policy.name, "parent_id": policy.parent_id}
    if policy.run_id is not None:
        run = get_run(db, policy.run_id)
        snap = run.data_snapshot
        out.update({"training_run_id": run.id, "trainer": run.kind,
                    "data_snapshot": {k: snap.get(k) for k in ("sha256", "max_judgment_id", "rounds", "pairs",
                                                               "rows", "prompt_ids_sha256") if k in snap},
                    "reward_model_id": snap.get("reward_model_id"), "reward_model": snap.get("reward_model")})
    return out


_D = RoundConfig()  # the defaults, declared once (rl/config.py)


def next_round(ws: WorkspaceLike, *, policy: str | None = _D.policy, k: int = _D.k, n_prompts: int = _D.prompts,
               mix_previous: bool = _D.mix_previous, max_new_tokens: int = _D.max_new_tokens,
               temperature: float = _D.temperature, seed: int = _D.seed, split: str | None = _D.split,
               required_reviewers: int = _D.required_reviewers, device: str | None = _D.device) -> RoundResult:
    from rl.sampling import SamplingParams, generate_candidates
    from store.models import ModelRow, newest_model
    from store.prompts import newest_round
    from store.runs import finish_run, start_run, update_run
    from training.runs import closed_on_error

    row: ModelRow = newest_model(ws.db, "policy", policy)
    previous = None
    if mix_previous:
        if row.parent_id is None:
            raise ValueError(f"--mix-previous: policy {row.name!r} has no parent policy to mix in")
        from store.models import list_models

        previous = next((m for m in list_models(ws.db) if m.id == row.parent_id), None)
        if previous is None or previous.kind not in ("policy", "external") or not (previous.path or previous.base):
            raise ValueError(f"--mix-previous: the parent of {row.name!r} is not a loadable policy")
        if previous.kind == "external":
            previous = ModelRow(**{**previous.__dict__, "kind": "policy"})
    last = newest_round(ws.db)
    number = 0 if last is None else last + 1
    lineage = lineage_of(ws.db, row)
    config = {"policy": row.name, "round": number, "k": k, "mix_previous": mix_previous, "n_prompts": n_prompts,
              "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    run_id = start_run(ws.db, RUN_KIND, config, lineage)
    with closed_on_error(ws.db, run_id):
        params = SamplingParams(k=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        result = generate_candidates(ws.db, row, n_prompts=n_prompts, params=params, round=number, split=split,
                                     required_reviewers=required_reviewers, device=device, previous=previous)
        comparison_ids = list(result.comparison_ids)
        update_run(ws.db, run_id, data_snapshot={**lineage, "comparison_ids": comparison_ids,
                                                 "previous_policy_id": previous.id if previous else None})
    finish_run(ws.db, run_id, "succeeded", metrics={"comparisons": result.comparisons,
                                                    "responses": result.responses, **result.as_dict()})
    return RoundResult(number, row.name, previous.name if previous else None, run_id, result.comparisons,
                       result.responses, comparison_ids, lineage)
