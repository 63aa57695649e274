"""Admin overview: comparisons by round and state, judgments per reviewer per day, time per judgment."""

from __future__ import annotations

import streamlit as st

from annotate.session import db_path, require_admin
from store.status import queue_overview, workspace_status

db = db_path()
require_admin()
st.title("Overview")
s = workspace_status(db)
o = queue_overview(db)
cols = st.columns(5)
cols[0].metric("Comparisons", s["comparisons"])
cols[1].metric("Complete", s["comparisons_complete"])
cols[2].metric("Pending", s["comparisons_pending"])
cols[3].metric("Judgments", s["judgments"])
median = o["median_seconds"]
cols[4].metric("Median time per judgment", "n/a" if median is None else f"{median:.1f} s")

st.subheader("Comparisons by round")
if o["by_round"].empty:
    st.info("No comparisons yet: import some or generate candidates on the Queue page.")
else:
    st.dataframe(o["by_round"], hide_index=True, width="stretch")

st.subheader("Judgments per reviewer per day")
if o["per_day"].empty:
    st.info("No judgments from reviewers yet.")
else:
    st.bar_chart(o["per_day"], x="day", y="judgments", color="reviewer", stack=True)
    st.dataframe(o["per_reviewer"], hide_index=True, width="stretch")
