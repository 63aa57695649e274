"""The reward-model evaluation report: `report.md` with two PNG charts beside it (accuracy, reliability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _table(rows: list[dict[str, Any]], label: str) -> list[str]:
    if not rows:
        return []
    out = [f"| {label} | pairs | accuracy | 95% interval |", "|---|---|---|---|"]
    out += [f"| {r['group']} | {r['pairs']} | {_pct(r['accuracy'])} | {_pct(r['low'])} – {_pct(r['high'])} |"
            for r in rows]
    return out + [""]


def _charts(folder: Path, metrics: dict[str, Any], groups: list[tuple[str, dict[str, Any]]],
            bins: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["reward model", "longer wins", "shorter wins"] + [name for name, _ in groups]
    values = [metrics["accuracy"], metrics["length_longer_accuracy"], metrics["length_shorter_accuracy"]]
    lows = [metrics["accuracy_low"], None, None]
    highs = [metrics["accuracy_high"], None, None]
    for _, g in groups:
        values.append(g["accuracy"])
        lows.append(g["low"])
        highs.append(g["high"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) + 2), 3.5))
    colors = ["#2b6cb0", "#a0aec0", "#a0aec0"] + ["#63b3ed"] * len(groups)
    ax.bar(range(len(labels)), values, color=colors)
    for i, (v, lo, hi) in enumerate(zip(values, lows, highs, strict=True)):
        if lo is not None:
            ax.errorbar(i, v, yerr=[[v - lo], [hi - v]], color="black", capsize=4)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("Held-out accuracy (95% Wilson interval)")
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    used = [b for b in bins if b["count"]]
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o", label="reward model")
    for b in used:
        ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence max(p, 1-p), p = sigmoid(r_c - r_r)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability (points: pairs per bin)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "reliability.png", dpi=100)
    plt.close(fig)


def write_report(folder: Path, model: str, source: str, metrics: dict[str, Any], by_round: list[dict[str, Any]],
                 by_reviewer: list[dict[str, Any]], bins: list[dict[str, Any]]) -> Path:
    """Write report.md, accuracy.png and reliability.png into `folder`; returns the markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = [(f"round {r['group']}", r) for r in by_round] + [(str(r["group"]), r) for r in by_reviewer]
    _charts(folder, metrics, groups, bins)
    lines = [
        f"# Reward model `{model}`: evaluation", "",
        f"Pairs: {metrics['pairs']} ({source}).", "",
        "| measure | value |", "|---|---|",
        f"| accuracy | {_pct(metrics['accuracy'])} (95% interval {_pct(metrics['accuracy_low'])} – "
        f"{_pct(metrics['accuracy_high'])}) |",
        f"| length baseline: longer wins | {_pct(metrics['length_longer_accuracy'])} |",
        f"| length baseline: shorter wins | {_pct(metrics['length_shorter_accuracy'])} |",
        f"| mean score gap r_c - r_r | {metrics['mean_gap']:.3f} |" if metrics["mean_gap"] is not None else "",
        f"| expected calibration error | {metrics['ece']:.3f} |", "",
        "![accuracy](accuracy.png)", "",
    ]
    if by_round:
        lines += ["## Per round", ""] + _table(by_round, "round")
    if by_reviewer:
        lines += ["## Per reviewer (agreement of the model with each reviewer)", ""] + _table(by_reviewer, "reviewer")
    lines += ["## Calibration", "", "| confidence bin | pairs | mean confidence | accuracy |", "|---|---|---|---|"]
    lines += [f"| {b['low']:.1f}–{b['high']:.1f} | {b['count']} | {b['confidence']:.3f} | {b['accuracy']:.3f} |"
              for b in bins]
    lines += ["", "![reliability](reliability.png)", ""]
    path = folder / "report.md"
    path.write_text("\n".join(line for line in lines if line is not None) + "\n", encoding="utf-8")
    return path
