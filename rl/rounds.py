"""`next_round(ws)`: sample candidates from the newest policy for prompts that have none yet and queue them as the
next round, with a run row that records the lineage: round -> policy -> its training run -> reward model and data
snapshot -> judgments. With `mix_previous`, one candidate in each comparison comes from the policy's parent, so
reviewers compare versions.

Once the comparisons are committed, the round's candidates are scored with the newest reward model (or the one
named by `reward`) through `reward.score.score_responses`, as `rankloop score --round N` does: scores stored per
response and model, each comparison's queue priority set from the model's uncertainty (store.queue: priority counts
across rounds). With no reward model yet, the round is queued unscored and `RoundResult.scoring` says so; a model
that fails to score leaves the priorities alone and says why (the round itself stays queued)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    scoring: dict[str, Any] = field(default_factory=dict)  # model, responses, comparisons, seconds; or note

    @property
    def scoring_line(self) -> str:
        """One line for the CLI and the loop's log: what scored the round, or why nothing did."""
        s = self.scoring
        if s.get("model"):
            return (f"scored with reward model {s['model']!r}: {s['responses']} responses, queue priority of "
                    f"{s['comparisons']} comparisons set from its uncertainty ({s['seconds']:.1f}s)")
        return s.get("note", "not scored")


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
               required_reviewers: int = _D.required_reviewers, device: str | None = _D.device,
               reward: str | None = None, score: bool = True, engine: str = _D.engine) -> RoundResult:
    """Queue round N+1 from `policy` (default: the newest), then score it with `reward` (default: the newest reward
    model; `score=False`: leave it unscored)."""
    from rl.sampling import SamplingParams, check_engine, generate_candidates
    from store.models import ModelRow, newest_model
    from store.prompts import newest_round
    from store.runs import finish_run, start_run, update_run
    from training.runs import closed_on_error

    check_engine(engine)  # e.g. vLLM not installed: said before the run row or the round exists
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
              "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "engine": engine}
    run_id = start_run(ws.db, RUN_KIND, config, lineage)
    with closed_on_error(ws.db, run_id):
        params = SamplingParams(k=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                engine=engine)
        result = generate_candidates(ws.db, row, n_prompts=n_prompts, params=params, round=number, split=split,
                                     required_reviewers=required_reviewers, device=device, previous=previous)
        comparison_ids = list(result.comparison_ids)
        update_run(ws.db, run_id, data_snapshot={**lineage, "comparison_ids": comparison_ids,
                                                 "previous_policy_id": previous.id if previous else None})
        scoring = score_round(ws, number, reward, device) if score and comparison_ids else \
            {"note": "not scored (scoring turned off)" if not score else "not scored: no comparisons"}
    finish_run(ws.db, run_id, "succeeded", metrics={"comparisons": result.comparisons,
                                                    "responses": result.responses, **result.as_dict(),
                                                    "scoring": scoring})
    return RoundResult(number, row.name, previous.name if previous else None, run_id, result.comparisons,
                       result.responses, comparison_ids, lineage, scoring)


def score_round(ws: WorkspaceLike, number: int, reward: str | None = None,
                device: str | None = None) -> dict[str, Any]:
    """Score round `number`'s candidates with `reward` (default: the newest reward model) and set its comparisons'
    priorities from the model's uncertainty; a dict for the run row: model, responses, comparisons, seconds, or a
    note saying why nothing was scored."""
    from reward.score import score_responses
    from store.models import list_models

    if not reward:
        rows = [m for m in list_models(ws.db, kind="reward") if m.path or m.adapter_path]
        if not rows:
            return {"note": "not scored: no reward model in this workspace yet (train one with `rankloop train "
                            "reward`); queue priorities left as they were"}
        reward = rows[-1].name
    try:
        result = score_responses(ws, reward, round=number, device=device, actor="round next")
    except Exception as e:  # noqa: BLE001 - the round is committed; a model that cannot score must not undo it
        return {"note": f"not scored: reward model {reward!r} failed ({type(e).__name__}: {e}); queue priorities "
                        "left as they were", "error": str(e)}
    return {"model": result.model, "responses": result.responses, "comparisons": result.comparisons,
            "seconds": round(result.seconds, 2)}
