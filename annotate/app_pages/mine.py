"""The reviewer's own past judgments (never anyone else's), newest first."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from annotate.ranking import describe
from annotate.session import db_path, require_user
from store.queue import my_judgments, progress

db = db_path()
user = require_user()
st.title("My judgments")
p = progress(db, user.id)
a, b, c = st.columns(3)
a.metric("Done today", p["done_today"])
b.metric("Total", p["total"])
c.metric("Left in my queue", p["remaining"])
rows = my_judgments(db, user.id)
if not rows:
    st.info("Nothing yet: your judgments show here once you submit some on the Rank page.")
    st.stop()


def _answer(r: dict) -> str:
    if r["skipped"]:
        return "skipped"
    if r["all_bad"]:
        return "all bad"
    return describe(r["ranking"], list(r["display_order"] or []))


frame = pd.DataFrame({
    "judgment": [r["id"] for r in rows],
    "item": [r["comparison_id"] for r in rows],
    "when": [r["created_at"] for r in rows],
    "answer": [_answer(r) for r in rows],
    "flags": [", ".join(r["flags"]) for r in rows],
    "seconds": [None if r["time_spent_ms"] is None else r["time_spent_ms"] / 1000 for r in rows],
    "undone": [r["undone"] for r in rows],
    "rationale": [r["rationale"] or "" for r in rows],
})
st.dataframe(frame, hide_index=True, width="stretch")
