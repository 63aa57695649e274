"""Admin: model versions with their lineage and metrics, every training or sampling run, and the evaluation
reports (markdown + PNG charts) written under the runs' folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import streamlit as st

from annotate.render import safe_markdown
from annotate.session import db_path, require_admin, workspace_dir
from store.models import list_models
from store.runs import RunRow, list_runs

IMAGE_LINE = re.compile(r"^!\[[^\]]*\]\([^)]*\.png\)\s*$", re.M)  # the charts are shown below the text


def _reports(runs: list[RunRow]) -> dict[str, Path]:
    """Evaluation runs whose folder (inside this workspace) holds a report.md, newest first."""
    root = workspace_dir().resolve()
    found = {}
    for r in sorted(runs, key=lambda r: r.id, reverse=True):
        if not r.output_path:
            continue
        folder = Path(r.output_path).resolve()
        if folder.is_relative_to(root) and (folder / "report.md").is_file():
            found[f"run {r.id}: {r.kind} ({r.status})"] = folder
    return found

db = db_path()
require_admin()
st.title("Models and reports")
models = list_models(db)
st.subheader("Models")
if not models:
    st.info("No models registered yet (`rankloop models add` or a training run adds them).")
else:
    names = {m.id: m.name for m in models}
    frame = pd.DataFrame([{
        "id": m.id, "name": m.name, "kind": m.kind, "round": m.round, "parent": names.get(m.parent_id),
        "run": m.run_id, "base": m.base, "created": m.created_at, **{f"metric.{k}": v for k, v in m.metrics.items()
                                                                     if isinstance(v, int | float)},
    } for m in models])
    st.dataframe(frame, hide_index=True, width="stretch")
    metric_cols = [c for c in frame.columns if c.startswith("metric.")]
    if metric_cols:
        metric = st.selectbox("Metric", metric_cols, key="model_metric")
        st.bar_chart(frame.dropna(subset=[metric]), x="name", y=metric, color="kind")

st.subheader("Run history")
runs = list_runs(db)
if not runs:
    st.info("No runs yet.")
else:
    frame = pd.DataFrame([{
        "id": r.id, "kind": r.kind, "status": r.status, "started": r.started_at, "finished": r.finished_at,
        "output": r.output_path, "error": r.error, "metrics": json.dumps(r.metrics, default=str),
    } for r in runs])
    st.dataframe(frame, hide_index=True, width="stretch")
    numeric = sorted({k for r in runs for k, v in r.metrics.items() if isinstance(v, int | float)})
    if numeric:
        metric = st.selectbox("Run metric", numeric, key="run_metric")
        chart = pd.DataFrame([{"run": r.id, "kind": r.kind, metric: r.metrics[metric]} for r in runs
                              if isinstance(r.metrics.get(metric), int | float)])
        st.line_chart(chart, x="run", y=metric, color="kind")

st.subheader("Reports")
reports = _reports(runs)
if not reports:
    st.info("No reports yet: `rankloop eval reward` and `rankloop eval policy` write them.")
else:
    label = st.selectbox("Report", list(reports), key="report_choice")
    folder = reports[label]
    st.markdown(safe_markdown(IMAGE_LINE.sub("", (folder / "report.md").read_text(encoding="utf-8"))))
    for png in sorted(folder.glob("*.png")):
        st.image(str(png), caption=png.name)
