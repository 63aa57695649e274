"""`run_loop(ws, LoopConfig(...))`: the whole RLHF loop, round after round, resumable.

Each round i (0-based) runs five steps, each a `loop_step` run row under one `loop` run row:

  sample    rl.rounds.next_round: k candidates per train prompt from policy P_i (P_0 = the base policy)
  judge     simulated reviewers (rankloop.simulate) with the oracle, or wait for people, polling the round's progress
  reward    reward.train.train_reward_model on the loop's rounds so far -> reward model RM_i
  policy    rl.dpo.train_dpo on those pairs (rl.kto.train_kto on their thumbs), or rl.ppo_run.train_ppo against
            RM_i -> policy P_{i+1}
  evaluate  rl.evaluate.evaluate_policy: P_{i+1} vs P_i and vs P_0 (reward-model win rate, KL); with an oracle,
            its win rates on held-out prompts; drift of P_{i+1}'s samples away from RM_i's training responses;
            forgetting (rl.forgetting): held-out reference answers' log-likelihood under P_{i+1} vs P_0;
            collapse: distinct-2 of P_{i+1}'s held-out samples vs P_0's

A step whose row succeeded is skipped on a rerun. A step cut short (the process killed) is redone: its row and the
child runs it left 'running' are closed as cancelled; models and rounds it may already have written are found
by name (`loop<L>-reward<i>`, `loop<L>-policy<i+1>`) or round number and adopted, never made twice. Running
`rankloop loop` again resumes the newest loop that did not finish with its recorded settings (`new=True` starts
another; options that differ from the recorded ones are refused, not ignored). After every
evaluation the report (report.md + PNG charts) is rewritten in runs/loop-<L>/, the loop row's output_path.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rankloop.loop_config import LoopConfig, ReviewersNotDone, check_trainer_settings, loop_config
from rankloop.models import ensure_default_policy
from rankloop.workspace import Workspace

RUN_KIND = "loop"
STEP_KIND = "loop_step"
STEPS = ("sample", "judge", "reward", "policy", "evaluate")
__all__ = ["LoopConfig", "LoopResult", "ReviewersNotDone", "loop_config", "run_loop"]


@dataclass
class LoopResult:
    run_id: int
    folder: Path
    rounds: list[dict[str, Any]]  # per round: the evaluate step's metrics
    resumed: bool


class _Loop:
    def __init__(self, ws: Workspace, config: LoopConfig, run_id: int, log: Callable[[str], None], engine: str):
        self.ws, self.config, self.run_id, self.log = ws, config, run_id, log
        self.folder = ws.runs_dir / f"loop-{run_id}"
        self.oracle = None
        self.engine = engine  # recorded on the loop's run row; a resumed loop samples as it started

    # names the loop gives what it makes: a rerun finds them instead of making them twice
    def policy_name(self, i: int) -> str:
        return self.config.policy if i == 0 else f"loop{self.run_id}-policy{i}"

    def reward_name(self, i: int) -> str:
        return f"loop{self.run_id}-reward{i}"

    def get_oracle(self) -> Any:
        if self.oracle is None and self.config.simulate:
            from rankloop.oracles import resolve_oracle

            self.oracle = resolve_oracle(self.config.simulate, self.ws.db)
        return self.oracle

    def steps(self) -> dict[tuple[int, str], Any]:
        from store.runs import list_runs

        return {(r.config["round"], r.config["step"]): r for r in list_runs(self.ws.db, kind=STEP_KIND)
                if r.config.get("loop_run_id") == self.run_id}

    def run(self) -> list[dict[str, Any]]:
        from store.runs import finish_run, start_run, update_run
        from training.runs import closed_on_error

        done = {key: r for key, r in self.steps().items() if r.status == "succeeded"}
        self._cancel_interrupted()
        state: dict[str, Any] = {}
        results = []
        for i in range(self.config.rounds):
            for step in STEPS:
                label = f"[loop {self.run_id}] round {i + 1}/{self.config.rounds} {step}"
                if (i, step) in done:
                    self.log(f"{label}: done before (run {done[(i, step)].id}), skipped")
                    state[(i, step)] = done[(i, step)].metrics
                    continue
                row = start_run(self.ws.db, STEP_KIND, {"loop_run_id": self.run_id, "round": i, "step": step})
                self.log(f"{label} ... (run {row})")
                started = time.monotonic()
                with closed_on_error(self.ws.db, row):
                    metrics = getattr(self, f"_{step}")(i, state)
                metrics["seconds"] = round(time.monotonic() - started, 1)
                if step == "evaluate":  # the round's own report.md (the admin runs page lists it)
                    update_run(self.ws.db, row, output_path=str(self.folder / f"round-{i + 1}"))
                finish_run(self.ws.db, row, "succeeded", metrics=metrics)
                state[(i, step)] = metrics
                self.log(f"{label}: {_summary(step, metrics)} ({metrics['seconds']}s)")
            results.append(state[(i, "evaluate")])
        return results

    def _cancel_interrupted(self) -> None:
        """Close the rows a killed run left 'running': the loop's own unfinished steps and their children."""
        from store.runs import finish_run, list_runs

        unfinished = [r for r in self.steps().values() if r.status == "running"]
        if not unfinished:
            return
        first = min(r.id for r in unfinished)
        mine = {self.reward_name(i) for i in range(self.config.rounds)} | \
            {self.policy_name(i) for i in range(1, self.config.rounds + 1)}
        for r in list_runs(self.ws.db):
            if r.status != "running" or r.id < first:
                continue
            cfg = r.config.get("config", r.config)
            ours = r.kind == STEP_KIND and r.config.get("loop_run_id") == self.run_id
            ours |= r.kind in ("reward", "dpo", "kto", "ppo") and cfg.get("name") in mine
            ours |= r.kind == "round" and r.config.get("policy") in mine | {self.config.policy}
            ours |= r.kind == "eval_policy" and r.config.get("new") in mine
            ours |= r.kind == "simulate" and r.config.get("prefix") == "sim-"
            if ours:
                finish_run(self.ws.db, r.id, "cancelled", error=f"interrupted; loop run {self.run_id} resumed")
                self.log(f"[loop {self.run_id}] run {r.id} ({r.kind}) was interrupted: closed as cancelled")

    # --- the five steps -----------------------------------------------------------------------------------------
    def _sample(self, i: int, state: dict) -> dict[str, Any]:
        from rl.rounds import next_round
        from store.prompts import newest_round

        policy = self.policy_name(i)
        if i == 0:
            ensure_default_policy(self.ws, policy)
        before = newest_round(self.ws.db)
        adopted = self._adopt_round(policy)  # a kill after the comparisons were written, before the step closed
        if adopted is not None:
            return adopted
        c = self.config
        # scored with the newest reward model: this loop's RM_{i-1}, or in round 1 the workspace's newest, if any
        result = next_round(self.ws, policy=policy, k=c.k, n_prompts=c.prompts, max_new_tokens=c.max_new_tokens,
                            temperature=c.temperature, seed=c.seed + i, split="train",
                            required_reviewers=c.required_reviewers, device=c.device,
                            reward=self.reward_name(i - 1) if i > 0 else None, engine=self.engine)
        if result.comparisons == 0:
            raise ValueError("no train prompts without comparisons are left to sample: import more prompts "
                             f"(split 'train'); the newest round is {before}")
        self.log(f"  round {result.round}: {result.scoring_line}")
        return {"round_number": result.round, "policy": policy, "comparisons": result.comparisons,
                "responses": result.responses, "round_run_id": result.run_id, "scoring": result.scoring}

    def _adopt_round(self, policy: str) -> dict[str, Any] | None:
        """A round this loop already queued from `policy` (the process died before the step closed)."""
        from store.runs import list_runs

        for r in reversed(list_runs(self.ws.db, kind="round")):
            ids = r.data_snapshot.get("comparison_ids") or []  # recorded once the comparisons were committed
            if r.config.get("policy") == policy and r.id > self.run_id and ids:
                return {"round_number": r.config["round"], "policy": policy, "comparisons": len(ids),
                        "responses": r.metrics.get("responses"), "round_run_id": r.id, "adopted": True}
        return None

    def _judge(self, i: int, state: dict) -> dict[str, Any]:
        from store.agreement import agreement_report
        from store.simulated import round_progress

        number = state[(i, "sample")]["round_number"]
        c = self.config
        metrics: dict[str, Any] = {"round_number": number}
        if c.simulate:
            from rankloop.simulate import SimulationConfig, simulate_reviewers

            sim = SimulationConfig(c.simulate, c.reviewers, c.noise, c.noise_model, c.spread, round=number,
                                   seed=c.seed)
            result = simulate_reviewers(self.ws, sim, oracle=self.get_oracle())
            metrics.update({"simulated": True, "judgments": result.judgments, "simulate_run_id": result.run_id})
        else:
            self._wait(number)
        progress = round_progress(self.ws.db, number)
        if progress["complete"] < progress["comparisons"]:
            raise ValueError(f"round {number}: {progress['comparisons'] - progress['complete']} comparisons still "
                             f"need reviewers (required {c.required_reviewers}, simulated {c.reviewers})")
        agreement = agreement_report(self.ws.db, number)
        metrics.update({"progress": progress, "agreement": agreement.get("pairwise_agreement"),
                        "alpha": agreement.get("alpha_ordinal"), "agreement_comparisons": agreement["comparisons"]})
        metrics.update(self._round_samples(number))
        return metrics

    def _round_samples(self, number: int) -> dict[str, Any]:
        """The round's queued candidates: mean length, and mean oracle score when there is an oracle."""
        import statistics

        from store.simulated import round_responses

        rows = round_responses(self.ws.db, number)
        out: dict[str, Any] = {"sample_words": statistics.fmean(len(r["text"].split()) for r in rows) if rows else 0}
        if self.get_oracle() is not None and rows:
            scores = self.get_oracle().score([r["messages"] for r in rows], [r["text"] for r in rows])
            out["sample_oracle_mean"] = statistics.fmean(scores)
        return out

    def _wait(self, number: int) -> None:
        from store.simulated import round_progress

        started = time.monotonic()
        last = None
        while True:
            p = round_progress(self.ws.db, number)
            if p["complete"] >= p["comparisons"]:
                return
            line = f"  round {number}: {p['complete']}/{p['comparisons']} comparisons complete, " \
                   f"{p['judgments_given']}/{p['judgments_needed']} judgments"
            if line != last:
                self.log(line + " (waiting for reviewers: `rankloop serve`)")
                last = line
            if self.config.wait_timeout and time.monotonic() - started > self.config.wait_timeout:
                raise ReviewersNotDone(f"round {number}: reviewers did not finish within "
                                       f"{self.config.wait_timeout:.0f}s; run `rankloop loop` again to keep waiting")
            time.sleep(self.config.poll_seconds)

    def _loop_rounds(self, i: int, state: dict) -> list[int]:
        return [state[(j, "sample")]["round_number"] for j in range(i + 1)]

    def _reward(self, i: int, state: dict) -> dict[str, Any]:
        from reward.config import load_reward_config
        from reward.train import train_reward_model

        name = self.reward_name(i)
        rounds = self._loop_rounds(i, state)
        existing = _model(self.ws, name)
        if existing is None:
            overrides = {**self.config.reward, "name": name, "rounds": rounds}
            if self.config.max_steps:
                overrides["max_steps"] = self.config.max_steps
            cfg = load_reward_config(self.ws.config.extra, self.ws.root / "rankloop.toml", None, overrides)
            ensure_default_policy(self.ws, cfg.base)
            train_reward_model(self.ws, cfg, progress=_show_progress())
            existing = _model(self.ws, name)
        return {"model": name, "rounds": rounds, "run_id": existing.run_id,
                "eval_accuracy": existing.metrics.get("eval_accuracy"),
                "eval_accuracy_low": existing.metrics.get("eval_accuracy_low"),
                "eval_accuracy_high": existing.metrics.get("eval_accuracy_high"),
                "eval_pairs": existing.metrics.get("eval_pairs"), "train_pairs": existing.metrics.get("train_pairs")}

    def _policy(self, i: int, state: dict) -> dict[str, Any]:
        from rankloop.loop_config import policy_config_class
        from rl.config import config_from_dict, load_section

        name, start = self.policy_name(i + 1), self.policy_name(i)
        existing = _model(self.ws, name)
        if existing is None:
            c = self.config
            section, cls = c.algo, policy_config_class(c.algo)
            overrides = {**getattr(c, section), "policy": start, "name": name}
            if c.algo in ("dpo", "kto"):  # the judgments of the loop's rounds so far
                overrides["rounds"] = self._loop_rounds(i, state)
            else:
                overrides["reward"] = self.reward_name(i)
            if c.max_steps:
                overrides["max_steps"] = c.max_steps
            if c.device:
                overrides["device"] = c.device
            cfg = load_section(cls, section, self.ws.config.extra, self.ws.root / "rankloop.toml")
            cfg = config_from_dict(cls, overrides, cfg, where="loop: ")
            if c.algo == "dpo":
                from rl.dpo import train_dpo

                train_dpo(self.ws, cfg, progress=_show_progress())
            elif c.algo == "kto":
                from rl.kto import train_kto

                train_kto(self.ws, cfg, progress=_show_progress())
            else:
                from rl.ppo_run import train_ppo

                train_ppo(self.ws, cfg, progress=_show_progress())
            existing = _model(self.ws, name)
        return {"model": name, "parent": start, "algo": self.config.algo, "run_id": existing.run_id,
                **{k: existing.metrics.get(k) for k in ("global_step", "train_loss", "eval_accuracy", "kl", "score")
                   if existing.metrics.get(k) is not None}}

    def _evaluate(self, i: int, state: dict) -> dict[str, Any]:
        import json

        from rankloop import loop_eval
        from rankloop.loop_report import write_loop_report
        from reward.score import RewardScorer
        from rl.evaluate import PolicySamples, eval_prompts, evaluate_policy
        from rl.sampling import SamplingParams
        from store.models import get_model

        c = self.config
        new, prev, base = self.policy_name(i + 1), self.policy_name(i), self.policy_name(0)
        rm = self.reward_name(i)
        metrics: dict[str, Any] = {"policy": new, "previous": prev, "base": base, "reward_model": rm,
                                   "round_number": state[(i, "sample")]["round_number"],
                                   "reward_model_accuracy": state[(i, "reward")].get("eval_accuracy"),
                                   "agreement": state[(i, "judge")].get("agreement"),
                                   "sample_words": state[(i, "judge")].get("sample_words"),
                                   "sample_oracle_mean": state[(i, "judge")].get("sample_oracle_mean")}
        # every policy is sampled once, here or inside evaluate_policy (same prompts, same parameters)
        prompts = eval_prompts(self.ws.db, c.eval_prompts)
        sampler = PolicySamples(self.ws.db, c.device, self.folder / "samples", engine=self.engine)
        params = SamplingParams(k=c.eval_k, max_new_tokens=c.eval_tokens, temperature=0.7, seed=c.seed)
        if c.eval_policy_runs:  # `rankloop eval policy`'s own run and report, on the same samples
            run = evaluate_policy(self.ws, new, prev, reward=rm, max_prompts=c.eval_prompts, k=c.eval_k,
                                  max_new_tokens=c.eval_tokens, temperature=params.temperature, seed=c.seed,
                                  device=c.device, sampler=sampler)
            metrics.update({"eval_run_vs_previous": run.run_id, "eval_report_vs_previous": str(run.report_dir)})
        samples = {name: [[x.text for x in cs] for cs in sampler.samples(name, prompts, params)]
                   for name in dict.fromkeys((new, prev, base))}
        scorer = RewardScorer.from_row(get_model(self.ws.db, rm), device=c.device)
        rm_scores = {name: loop_eval.scores_of(scorer, prompts, s) for name, s in samples.items()}
        for label, other in (("previous", prev), ("base", base)):
            w = loop_eval.win_rate(rm_scores[new], rm_scores[other])
            metrics.update({f"rm_win_rate_vs_{label}": w["win_rate"], f"rm_win_rate_vs_{label}_low": w["low"],
                            f"rm_win_rate_vs_{label}_high": w["high"],
                            f"kl_vs_{label}": loop_eval.kl(sampler, new, other, prompts, samples[new])})
        check = loop_eval.forgetting(self.ws, c, sampler, new, base)
        del sampler  # the models are not needed past here
        metrics["forgetting"] = {k: v for k, v in check.items() if not k.startswith("per_item")}
        if check["warn"]:
            self.log(f"[loop {self.run_id}] round {i + 1}: {check['message']}")
        metrics["eval_samples"] = sum(len(s) for s in samples[new])
        metrics["eval_words"] = loop_eval.mean_words(samples[new])
        metrics["eval_words_base"] = loop_eval.mean_words(samples[base])
        metrics["collapse"] = loop_eval.collapse(samples[new], samples[base], c.collapse_threshold)
        if metrics["collapse"]["warn"]:
            self.log(f"[loop {self.run_id}] round {i + 1}: {metrics['collapse']['message']}")
        oracle = self.get_oracle()
        if oracle is not None:
            scores = {name: loop_eval.scores_of(oracle, prompts, s) for name, s in samples.items()}
            for label, other in (("previous", prev), ("base", base)):
                w = loop_eval.win_rate(scores[new], scores[other])
                metrics.update({f"oracle_win_rate_vs_{label}": w["win_rate"], f"oracle_win_rate_vs_{label}_low":
                                w["low"], f"oracle_win_rate_vs_{label}_high": w["high"], "oracle_n": w["n"]})
            metrics["oracle_mean"] = _mean(scores[new])
            metrics["oracle_mean_base"] = _mean(scores[base])
        drift, dists = loop_eval.drift(self.ws, scorer, self._loop_rounds(i, state), rm_scores[new], samples[new])
        metrics["drift"] = drift
        folder = self.folder / f"round-{i + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "drift.json").write_text(json.dumps(dists), encoding="utf-8")
        (folder / "forgetting.json").write_text(json.dumps(check), encoding="utf-8")
        state[(i, "evaluate")] = metrics
        write_loop_report(self.ws, self.run_id, extra={(i, "evaluate"): metrics})
        return metrics


def _show_progress() -> bool:
    """Trainers' progress bars on a terminal, and in a background job's log (the runner sets RANKLOOP_PROGRESS)."""
    return sys.stderr.isatty() or os.environ.get("RANKLOOP_PROGRESS") == "1"


def _mean(rows: list[list[float]]) -> float:
    flat = [x for xs in rows for x in xs]
    return sum(flat) / len(flat) if flat else 0.0


def _model(ws: Workspace, name: str) -> Any:
    from store.models import UnknownModel, get_model

    try:
        return get_model(ws.db, name)
    except UnknownModel:
        return None


def _summary(step: str, m: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    if step == "sample":
        return f"round {m['round_number']}: {m['comparisons']} comparisons from {m['policy']!r}"
    if step == "judge":
        return f"{m['progress']['complete']}/{m['progress']['comparisons']} complete, agreement {f(m['agreement'])}"
    if step == "reward":
        return f"{m['model']}: held-out accuracy {f(m['eval_accuracy'])} on {m['eval_pairs']} pairs"
    if step == "policy":
        return f"{m['model']} ({m['algo']}) from {m['parent']}"
    text = f"{m['policy']}: reward-model win rate vs previous {f(m['rm_win_rate_vs_previous'])}, " \
           f"vs base {f(m['rm_win_rate_vs_base'])}, KL {f(m['kl_vs_previous'])}"
    if "oracle_win_rate_vs_base" in m:
        text += f"; oracle win rate vs base {f(m['oracle_win_rate_vs_base'])}"
    return text


def _shown(table: dict[str, Any], key: str) -> str:
    return repr(table[key]) if key in table else "the trainer's default"


def _differences(recorded: LoopConfig, asked: dict[str, Any]) -> list[str]:
    """`FIELD=recorded (asked: VALUE)` for each setting in `asked` that the recorded loop config does not have."""
    have, want = asdict(recorded), asdict(loop_config(asked, recorded, where="command line: "))
    out = []
    for key, value in have.items():
        if isinstance(value, dict):
            out += [f"{key}.{sub}={_shown(value, sub)} (asked: {_shown(want[key], sub)})"
                    for sub in sorted({*value, *want[key]}) if value.get(sub) != want[key].get(sub)]
        elif value != want[key]:
            out.append(f"{key}={value!r} (asked: {want[key]!r})")
    return out


def run_loop(ws: Workspace, config: LoopConfig, *, new: bool = False, asked: dict[str, Any] | None = None,
             pinned: dict[str, Any] | None = None, log: Callable[[str], None] | None = None) -> LoopResult:
    """Run the loop, or resume the newest unfinished one (its recorded config) unless `new`. `asked`: the settings
    given on the command line; resuming a loop recorded with other values is refused (they would be ignored).
    `pinned`: the settings rankloop.toml's [loop] table sets; like `asked`, a calibration does not replace them."""
    from rankloop.loop_report import write_loop_report
    from rl.sampling import workspace_engine
    from store.runs import finish_run, list_runs, reopen_run, start_run, update_run
    from training.runs import closed_on_error

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    engine = workspace_engine(ws)  # [generation] engine, or `rankloop loop --engine`
    unfinished = [r for r in list_runs(ws.db, kind=RUN_KIND) if r.status != "succeeded"]
    resumed = bool(unfinished) and not new
    if resumed:
        row = unfinished[-1]
        recorded = dict(row.config)
        engine = recorded.pop("engine", engine)  # the sampling engine it started with (older runs: none recorded)
        config = loop_config(recorded, where=f"loop run {row.id} config: ")
        differ = _differences(config, asked or {})
        if differ:
            raise ValueError(f"loop run {row.id} is unfinished ({row.status}) and was started with "
                             f"{', '.join(differ)}: run `rankloop loop` without those options to resume it, or "
                             "add --new to start another loop")
        if row.status != "running":
            reopen_run(ws.db, row.id)
        run_id = row.id
        log(f"[loop {run_id}] resuming with its recorded settings ({config.rounds} rounds, {config.algo}); "
            "`--new` starts another loop instead")
    else:
        if config.simulate:
            from rankloop.oracles import resolve_oracle

            resolve_oracle(config.simulate, ws.db)  # a bad oracle fails before anything is written
            from rankloop.simulate import with_calibration  # `simulate --calibrate`'s fit, unless flags differ

            config, fitted = with_calibration(ws.db, config, {**(pinned or {}), **(asked or {})})
            if fitted is not None:
                log(f"simulated reviewers: noise {config.noise:.4g} ({config.noise_model}), spread {config.spread:g} "
                    f"from calibration run {fitted['run_id']}")
        check_trainer_settings(ws, config)
        run_id = start_run(ws.db, RUN_KIND, {**asdict(config), "engine": engine})
        update_run(ws.db, run_id, output_path=str(ws.runs_dir / f"loop-{run_id}"))
        log(f"[loop {run_id}] {config.rounds} rounds of {config.algo}"
            + (f", simulated reviewers ({config.simulate})" if config.simulate else ", human reviewers"))
    loop = _Loop(ws, config, run_id, log, engine)
    with closed_on_error(ws.db, run_id):
        rounds = loop.run()
        write_loop_report(ws, run_id)
    last = rounds[-1]
    finish_run(ws.db, run_id, "succeeded", metrics={k: last.get(k) for k in (
        "policy", "oracle_win_rate_vs_base", "oracle_win_rate_vs_base_low", "oracle_win_rate_vs_base_high",
        "rm_win_rate_vs_base", "kl_vs_base", "reward_model_accuracy") if last.get(k) is not None})
    return LoopResult(run_id, loop.folder, rounds, resumed)
