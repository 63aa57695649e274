"""The loop's report: runs/loop-<L>/report.md with PNG charts, rewritten after every round's evaluation.

Across rounds: oracle win rate (when simulated) and reward-model win rate of each new policy against the previous
one and against round 0, the reward model's held-out accuracy, reviewer agreement, KL, forgetting (held-out reference
answers' log-likelihood vs round 0, rl.forgetting, with a warning past the threshold), response length, diversity
(distinct-2 vs round 0's, with a warning when it collapses), and drift (how the new samples' reward-model scores and
lengths moved away from the responses the reward model was trained on). Per round: the models and runs it made and
the drift distributions. The admin page "Models and runs" shows any run folder holding report.md + PNGs, so the loop
run row's output_path is this folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from store.workspace import WorkspaceLike


def _rows(ws: WorkspaceLike, loop_run_id: int, extra: dict | None) -> dict[tuple[int, str], dict[str, Any]]:
    from store.runs import list_runs

    out = {(r.config["round"], r.config["step"]): r.metrics for r in list_runs(ws.db, kind="loop_step")
           if r.config.get("loop_run_id") == loop_run_id and r.status == "succeeded"}
    out.update(extra or {})
    return out


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_chart(path: Path, rounds: list[int], series: dict[str, list[Any]], ylabel: str, title: str,
                hline: float | None = None, ylim: tuple[float, float] | None = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, values in series.items():
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linewidth=1, linestyle="--")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _drift_chart(path: Path, dists: dict[int, dict[str, list[float]]]) -> None:
    plt = _plt()
    rounds = sorted(dists)
    fig, axes = plt.subplots(2, len(rounds), figsize=(3.2 * len(rounds), 5), squeeze=False)
    for col, r in enumerate(rounds):
        d = dists[r]
        for row, (key, label) in enumerate((("scores", "reward-model score"), ("lengths", "words"))):
            ax = axes[row][col]
            for part, name in (("train", "RM training responses"), ("new", "new policy's samples")):
                values = d.get(f"{part}_{key}") or []
                if values:
                    ax.hist(values, bins=15, alpha=0.5, density=True, label=name)
            ax.set_xlabel(label, fontsize=8)
            ax.set_title(f"round {r}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _forgetting_cell(e: dict[str, Any]) -> str:
    f = e.get("forgetting")
    return "-" if not f else f"{f['change']:+.3f}" + (" **!**" if f.get("warn") else "")


def _forgetting_lines(e: dict[str, Any]) -> list[str]:
    """The round's forgetting check (rl.forgetting): a line, and a warning line past the threshold."""
    f = e.get("forgetting")
    if not f:
        return []
    lines = [f"- forgetting: held-out reference answers (`{f.get('set')}`, {f['items']} items) have mean "
             f"log-likelihood {f['loglik_new']:.3f} nats/token under `{e.get('policy')}` vs {f['loglik_base']:.3f} "
             f"under `{e.get('base')}`: change {f['change']:+.3f} ({f['worse_share']:.0%} of items less likely; "
             f"warning below -{f['threshold']})"]
    if f.get("warn"):
        lines.append(f"- **WARNING: the policy may be forgetting what the base knew** (change {f['change']:+.3f} "
                     f"nats/token, past -{f['threshold']}): consider a higher DPO beta, `dpo.replay` or "
                     "`dpo.sft_replay`, fewer steps, or check the training data")
    return lines


def _collapse_cell(e: dict[str, Any]) -> str:
    c = e.get("collapse")
    return "-" if not c or c.get("distinct2") is None else f"{c['distinct2']:.3f}" + (" **!**" if c["warn"] else "")


def _collapse_lines(e: dict[str, Any]) -> list[str]:
    """The round's collapse check (rankloop.loop_eval.collapse): a line, and a warning line below the threshold."""
    c = e.get("collapse")
    if not c:
        return []
    lines = [f"- diversity: distinct-2 (distinct word bigrams over all) of the held-out samples {_f(c['distinct2'])} "
             f"vs {_f(c['distinct2_base'])} in round 0 (warning below {c['threshold']:g} of round 0's)"]
    if c.get("warn"):
        lines.append(f"- **WARNING: the policy may answer every prompt alike** ({c['message']}); a win rate over such "
                     "a policy's samples says what the judge prizes, not that answers improved: consider a larger "
                     "KL coefficient, a lower learning rate or fewer steps")
    return lines


def _round_report(folder: Path, loop_run_id: int, r: int, section: list[str], dists: dict | None) -> None:
    """runs/loop-<L>/round-<r>/report.md (+ its drift chart): the evaluate step's own report."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# Loop {loop_run_id}, round {r}", "", *section[2:]]
    if dists:
        _drift_chart(folder / "drift.png", {r: dists})
        lines.append("![drift](drift.png)")
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_loop_report(ws: WorkspaceLike, loop_run_id: int, extra: dict | None = None) -> Path:
    """Write runs/loop-<L>/report.md and its charts from the loop's finished steps; returns the folder."""
    from store.runs import get_run

    run = get_run(ws.db, loop_run_id)
    folder = Path(run.output_path) if run.output_path else ws.runs_dir / f"loop-{loop_run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    steps = _rows(ws, loop_run_id, extra)
    done = sorted(i for (i, step) in steps if step == "evaluate")
    cfg = run.config
    lines = [f"# Loop {loop_run_id}: {len(done)} of {cfg.get('rounds')} rounds", "",
             f"Policy trainer **{cfg.get('algo')}**, base policy `{cfg.get('policy')}`, "
             + (f"simulated reviewers (oracle `{cfg.get('simulate')}`, {cfg.get('reviewers')} reviewers, noise "
                f"{cfg.get('noise')} {cfg.get('noise_model')}, spread {cfg.get('spread')})" if cfg.get("simulate")
                else "human reviewers")
             + f"; {cfg.get('prompts')} prompts x {cfg.get('k')} candidates per round, evaluation on "
             f"{cfg.get('eval_prompts')} held-out prompts x {cfg.get('eval_k')} samples.", ""]
    if not done:
        lines.append("No round has been evaluated yet.")
        (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder
    ev = [steps[(i, "evaluate")] for i in done]
    rounds = [i + 1 for i in done]
    oracle = any("oracle_win_rate_vs_base" in e for e in ev)
    lines += ["| round | policy | " + ("oracle win vs round 0 | oracle win vs previous | oracle mean | " if oracle
                                       else "") + "RM win vs round 0 | RM win vs previous | RM held-out accuracy | "
              "KL vs previous | forgetting: answer log-lik. change | reviewer agreement | words (held-out) | "
              "distinct-2 (held-out) | score drift KS | length drift KS |",
              "|---" * (13 + (3 if oracle else 0)) + "|"]
    for r, e in zip(rounds, ev, strict=True):
        d = e.get("drift", {})
        cells = [str(r), f"`{e['policy']}`"]
        if oracle:
            cells += [f"{_f(e.get('oracle_win_rate_vs_base'))} ({_f(e.get('oracle_win_rate_vs_base_low'), 2)}-"
                      f"{_f(e.get('oracle_win_rate_vs_base_high'), 2)})", _f(e.get("oracle_win_rate_vs_previous")),
                      _f(e.get("oracle_mean"))]
        cells += [_f(e.get("rm_win_rate_vs_base")), _f(e.get("rm_win_rate_vs_previous")),
                  _f(e.get("reward_model_accuracy")), _f(e.get("kl_vs_previous")), _forgetting_cell(e),
                  _f(e.get("agreement")),
                  _f(e.get("eval_words"), 1), _collapse_cell(e), _f(d.get("score", {}).get("ks")),
                  _f(d.get("length", {}).get("ks"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Win rates: sample by sample on the same held-out prompts, ties count one half (95% Wilson "
              "interval in brackets). RM = the round's reward model. Drift: Kolmogorov-Smirnov statistic between the "
              "new policy's held-out samples and the responses the round's reward model was trained on (0: same "
              "distribution, 1: disjoint). Forgetting: change in the mean log-likelihood per token of held-out "
              "reference answers (general questions the loop never trains on) under the new policy vs round 0's, "
              "in nats; **!** marks a drop past the warning threshold. Distinct-2: distinct word bigrams over all "
              "bigrams of the held-out samples; **!** marks a fall below `collapse_threshold` times round 0's.", ""]
    series = {"RM vs round 0": [e.get("rm_win_rate_vs_base") for e in ev],
              "RM vs previous": [e.get("rm_win_rate_vs_previous") for e in ev]}
    if oracle:
        series = {"oracle vs round 0": [e.get("oracle_win_rate_vs_base") for e in ev],
                  "oracle vs previous": [e.get("oracle_win_rate_vs_previous") for e in ev], **series}
    _line_chart(folder / "win_rates.png", rounds, series, "win rate", "Win rate of each round's policy", 0.5,
                (0, 1))
    _line_chart(folder / "reward_model.png", rounds, {
        "RM held-out accuracy": [e.get("reward_model_accuracy") for e in ev],
        "reviewer agreement": [e.get("agreement") for e in ev]}, "share", "Reward model and reviewers", 0.5, (0, 1))
    _line_chart(folder / "kl_length.png", rounds, {
        "KL vs previous (nats)": [e.get("kl_vs_previous") for e in ev],
        "KL vs round 0 (nats)": [e.get("kl_vs_base") for e in ev],
        "words, new policy": [e.get("eval_words") for e in ev],
        "words, round 0 policy": [e.get("eval_words_base") for e in ev]}, "value", "KL and response length")
    charts = ["win_rates.png", "reward_model.png", "kl_length.png"]
    if oracle:
        _line_chart(folder / "oracle_reward.png", rounds, {
            "new policy (held-out)": [e.get("oracle_mean") for e in ev],
            "round 0 policy (held-out)": [e.get("oracle_mean_base") for e in ev],
            "candidates shown to reviewers": [e.get("sample_oracle_mean") for e in ev]}, "oracle reward",
            "Oracle reward")
        charts.append("oracle_reward.png")
    dists = {}
    for r in rounds:
        path = folder / f"round-{r}" / "drift.json"
        if path.is_file():
            raw = json.loads(path.read_text(encoding="utf-8"))
            dists[r] = {k: raw.get(k, []) for k in ("train_scores", "new_scores", "train_lengths", "new_lengths")}
    if dists:
        _drift_chart(folder / "drift.png", dists)
        charts.append("drift.png")
    for r, i, e in zip(rounds, done, ev, strict=True):
        s, j, rw, p = (steps.get((i, k), {}) for k in ("sample", "judge", "reward", "policy"))
        d = e.get("drift", {})
        section = [f"## Round {r}", "",
                  f"- sampled: comparison round {s.get('round_number')}, {s.get('comparisons')} comparisons "
                  f"({s.get('responses')} responses) from `{s.get('policy')}` (run {s.get('round_run_id')}); mean "
                  f"{_f(j.get('sample_words'), 1)} words"
                  + (f", mean oracle reward {_f(j.get('sample_oracle_mean'))}" if j.get("sample_oracle_mean")
                     is not None else ""),
                  f"- judged: {j.get('progress', {}).get('judgments_given')} judgments"
                  + (f" by simulated reviewers (run {j.get('simulate_run_id')})" if j.get("simulated") else "")
                  + f"; pairwise agreement {_f(j.get('agreement'))}, Krippendorff's alpha {_f(j.get('alpha'))}",
                  f"- reward model `{rw.get('model')}` (run {rw.get('run_id')}) on rounds {rw.get('rounds')}: "
                  f"held-out accuracy {_f(rw.get('eval_accuracy'))} on {rw.get('eval_pairs')} pairs "
                  f"({rw.get('train_pairs')} training pairs)",
                  f"- policy `{p.get('model')}` ({p.get('algo')}, run {p.get('run_id')}) from `{p.get('parent')}`",
                  f"- evaluation: reward-model win rate {_f(e.get('rm_win_rate_vs_previous'))} vs "
                  f"`{e.get('previous')}`, {_f(e.get('rm_win_rate_vs_base'))} vs `{e.get('base')}`; KL "
                  f"{_f(e.get('kl_vs_previous'))} / {_f(e.get('kl_vs_base'))} nats; "
                  f"{_f(e.get('eval_words'), 1)} words per held-out sample ({_f(e.get('eval_words_base'), 1)} "
                  "in round 0)" + (f"; `rankloop eval policy` run {e['eval_run_vs_previous']}: "
                                    f"{e['eval_report_vs_previous']}/report.md" if e.get("eval_run_vs_previous")
                                    else ""),
                  f"- drift from RM training responses: score shift {_f(d.get('score', {}).get('shift_sd'), 2)} sd "
                  f"(KS {_f(d.get('score', {}).get('ks'))}, {_f(d.get('score', {}).get('outside'), 2)} outside "
                  f"the training range); length shift {_f(d.get('length', {}).get('shift_sd'), 2)} sd "
                  f"(KS {_f(d.get('length', {}).get('ks'))})", *_forgetting_lines(e), *_collapse_lines(e), ""]
        lines += section
        _round_report(folder / f"round-{r}", loop_run_id, r, section, dists.get(r))
    lines += [f"![{name[:-4].replace('_', ' ')}]({name})" for name in charts]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
