"""`next_round(ws)`: sample candidates from the newest policy for prompts that have none yet and queue them as the
next round, with a run row that records the lineage: round -> policy -> its training run -> reward model and data
snapshot -> judgments. With `mix_previous`, one candidate in each comparison comes from the policy's parent, so
reviewers compare versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl.config import RoundConfig

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


def next_round(ws: Any, *, policy: str | None = _D.policy, k: int = _D.k, n_prompts: int = _D.prompts,
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
        params = SamplingParams(k=max(2, k - 1) if mix_previous else k, max_new_tokens=max_new_tokens,
                                temperature=temperature, seed=seed)
        if mix_previous:
            result = _mixed(ws, row, previous, number, n_prompts, params, k - 1, split, required_reviewers, device)
        else:
            result = generate_candidates(ws.db, row, n_prompts=n_prompts, params=params, round=number, split=split,
                                         required_reviewers=required_reviewers, device=device)
        comparison_ids = list(result.comparison_ids)
        update_run(ws.db, run_id, data_snapshot={**lineage, "comparison_ids": comparison_ids,
                                                 "previous_policy_id": previous.id if previous else None})
    finish_run(ws.db, run_id, "succeeded", metrics={"comparisons": result.comparisons,
                                                    "responses": result.responses, **result.as_dict()})
    return RoundResult(number, row.name, previous.name if previous else None, run_id, result.comparisons,
                       result.responses, comparison_ids, lineage)


def _mixed(ws: Any, row: Any, previous: Any, number: int, n_prompts: int, params: Any, keep_new: int,
           split: str | None, required_reviewers: int, device: str | None) -> Any:
    """k - 1 candidates from the new policy and one from its parent in each comparison."""
    from dataclasses import replace

    from rl.sampling import Completion, SamplingResult, load_policy, policy_location, sample_completions
    from store.batch import Batch, Comparison, Prompt, Response, write_batch
    from store.db import write
    from store.prompts import prompts_with_comparisons, prompts_without_comparisons
    from training.device import pick_device

    prompts = prompts_without_comparisons(ws.db, n_prompts, split)
    if not prompts:
        return SamplingResult(0, 0, 0, [], 0, 0, 0, 0, 0.0, 0.0, "none")
    choice = pick_device(device)
    conversations = [p.messages for p in prompts]
    drawn: dict[int, list[tuple[Any, Completion]]] = {i: [] for i in range(len(prompts))}
    for model_row, p in ((row, params), (previous, replace(params, k=2, seed=params.seed + 10_000))):
        model, tok = load_policy(policy_location(model_row), choice.device, choice.dtype, model_row.adapter_path)
        for i, samples in enumerate(sample_completions(model, tok, conversations, p, choice.device)):
            drawn[i] += [(model_row, c) for c in samples[:keep_new if model_row is row else 1]]
    batch = Batch()
    for i, p in enumerate(prompts):
        batch.prompts.append(Prompt(p.id, p.messages, p.text, p.source, p.split, p.tags))
        for j, (model_row, c) in enumerate(drawn[i]):
            batch.responses.append(Response((p.id, j), p.id, c.text, source="sample", model_id=model_row.id,
                                            model_name=model_row.name, seed=c.seed, params={
                                                "temperature": params.temperature, "finished": c.finished,
                                                "new_tokens": c.new_tokens, "mix_previous": model_row is previous}))
        batch.comparisons.append(Comparison(p.id, p.id, [(p.id, j) for j in range(len(drawn[i]))], source="sample",
                                            round=number, required_reviewers=required_reviewers))

    def work(con) -> Any:
        taken = prompts_with_comparisons(con, [p.id for p in prompts])
        todo = Batch(prompts=[x for x in batch.prompts if x.key not in taken],
                     responses=[x for x in batch.responses if x.prompt_key not in taken],
                     comparisons=[x for x in batch.comparisons if x.prompt_key not in taken])
        return write_batch(con, todo)

    written = write(ws.db, work)
    kept = [c for cs in drawn.values() for _, c in cs]
    return SamplingResult(len(prompts), written.responses, written.comparisons, written.comparison_ids, 0,
                          sum(c.new_tokens for c in kept), sum(c.finished for c in kept), 1, 0.0, 0.0, choice.name)
