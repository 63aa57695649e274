"""Admin: guidelines for reviewers, gold rate, leases, undo window, session and lockout settings."""

from __future__ import annotations

import streamlit as st

from annotate.render import safe_markdown
from annotate.session import db_path, require_admin
from store.settings import SETTINGS, get_settings, set_setting

db = db_path()
admin = require_admin()
st.title("Settings")
ss = st.session_state
current = get_settings(db)


def _save(key: str) -> None:
    try:
        set_setting(db, key, ss[f"setting:{key}"], actor=admin.name)
        ss["settings_msg"] = ("success", f"Saved {key}.")
    except ValueError as e:
        ss["settings_msg"] = ("error", str(e))


msg = ss.pop("settings_msg", None)
if msg:
    getattr(st, msg[0])(msg[1])
st.subheader("Guidelines")
ss.setdefault("setting:guidelines", current["guidelines"])
st.text_area("Markdown shown to reviewers", key="setting:guidelines", height=260)
st.button("Save guidelines", key="save:guidelines", on_click=_save, args=("guidelines",), type="primary")
with st.expander("Preview"):
    st.markdown(safe_markdown(ss["setting:guidelines"]) or "_empty_")

st.subheader("Queue and sessions")
for key, spec in SETTINGS.items():
    if key in ("guidelines", "required_reviewers"):
        continue
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    ss.setdefault(f"setting:{key}", current[key])
    if isinstance(spec.default, float):
        left.number_input(f"{key}: {spec.help}", spec.low, spec.high, key=f"setting:{key}", step=0.05)
    else:
        left.number_input(f"{key}: {spec.help}", int(spec.low), int(spec.high), key=f"setting:{key}", step=1)
    right.button("Save", key=f"save:{key}", on_click=_save, args=(key,))
