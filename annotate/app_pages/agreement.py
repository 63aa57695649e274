"""Admin: how much reviewers agree (pairwise, Krippendorff's alpha, Kendall's tau vs consensus) and gold accuracy."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from annotate.session import db_path, require_admin
from store.agreement import agreement_report, gold_accuracy
from store.status import workspace_status

db = db_path()
require_admin()
st.title("Agreement")
rounds = [int(r) for r in workspace_status(db)["rounds"]]
choice = st.selectbox("Round", ["all", *rounds], key="agreement_round")
report = agreement_report(db, None if choice == "all" else int(choice))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


a, b, c = st.columns(3)
a.metric("Comparisons with 2+ reviewers", report["comparisons"])
b.metric("Pairwise agreement", _fmt(report["pairwise_agreement"]), help="Share of response pairs two reviewers "
         "order the same way (better, worse or tied).")
c.metric("Krippendorff's alpha (ordinal)", _fmt(report["alpha_ordinal"]), help="1 = perfect, 0 = chance level.")
if not report["reviewers"]:
    st.info("Agreement needs comparisons ranked by two or more reviewers (set N above 1 on the Queue page).")
else:
    frame = pd.DataFrame(report["reviewers"])
    st.subheader("Each reviewer against the consensus of the others")
    st.bar_chart(frame.dropna(subset=["tau_vs_consensus"]), x="reviewer", y="tau_vs_consensus")
    st.dataframe(frame, hide_index=True, width="stretch")

st.subheader("Gold accuracy")
gold = gold_accuracy(db)
if gold:
    st.dataframe(pd.DataFrame([{"reviewer": n, **v} for n, v in sorted(gold.items())]), hide_index=True)
else:
    st.info("No gold answers yet (set some on the Queue page, and a gold rate in Settings).")
