"""Admin: the audit log (logins, admin actions, undos, imports and exports), newest first."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from annotate.session import db_path, require_admin
from store.audit import list_events

db = db_path()
require_admin()
st.title("Audit log")
left, right, n = st.columns([2, 2, 1])
actor = left.text_input("Actor", key="audit_actor").strip() or None
action = right.text_input("Action starts with", key="audit_action", placeholder="login").strip() or None
limit = n.number_input("Rows", 10, 5000, 500, step=100, key="audit_limit")
events = list_events(db, actor=actor, action=action, limit=int(limit))
if not events:
    st.info("No events match.")
else:
    frame = pd.DataFrame(events)
    frame["details"] = [json.dumps(d, ensure_ascii=False) for d in frame["details"]]
    st.dataframe(frame, hide_index=True, width="stretch")
