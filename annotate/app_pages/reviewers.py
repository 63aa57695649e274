"""Admin: accounts (add, deactivate, reset password), with each reviewer's work and gold accuracy."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from annotate.session import db_path, require_admin
from store.agreement import gold_accuracy
from store.status import queue_overview
from store.users import add_user, deactivate_user, list_users, reset_user

db = db_path()
admin = require_admin()
st.title("Reviewers")
ss = st.session_state


def _add() -> None:
    name, pw, again = ss.get("new_name", "").strip(), ss.get("new_pw", ""), ss.get("new_pw2", "")
    if pw != again:
        ss["reviewers_msg"] = ("error", "The two passwords differ.")
        return
    try:
        add_user(db, name, ss.get("new_role", "reviewer"), pw, actor=admin.name)
    except ValueError as e:
        ss["reviewers_msg"] = ("error", str(e))
        return
    ss["reviewers_msg"] = ("success", f"Added {name}.")
    ss["new_name"] = ss["new_pw"] = ss["new_pw2"] = ""


def _deactivate() -> None:
    name = ss.get("deactivate_name")
    if name == admin.name:
        ss["reviewers_msg"] = ("error", "You cannot deactivate yourself.")
        return
    deactivate_user(db, name, actor=admin.name)
    ss["reviewers_msg"] = ("success", f"Deactivated {name}; their sessions ended.")


def _reset() -> None:
    name, pw = ss.get("reset_name"), ss.get("reset_pw", "")
    role = ss.get("reset_role")
    try:
        reset_user(db, name, pw, actor=admin.name, role=None if role == "keep" else role)
    except ValueError as e:
        ss["reviewers_msg"] = ("error", str(e))
        return
    ss["reviewers_msg"] = ("success", f"Reset {name}: new password set, lockout cleared, account active.")
    ss["reset_pw"] = ""


msg = ss.pop("reviewers_msg", None)
if msg:
    getattr(st, msg[0])(msg[1])
users = list_users(db)
gold = gold_accuracy(db)
work = queue_overview(db)["per_reviewer"].set_index("reviewer") if users else None
rows = []
for u in users:
    w = work.loc[u.name] if work is not None and u.name in work.index else None
    rows.append({
        "name": u.name, "role": u.role, "active": u.active, "last login": u.last_login_at,
        "failed logins": u.failed_logins, "locked until": u.locked_until,
        "judgments": 0 if w is None else int(w["judgments"]),
        "median s": None if w is None else w["median_seconds"],
        "gold items": gold.get(u.name, {}).get("gold_items", 0),
        "gold accuracy": gold.get(u.name, {}).get("gold_accuracy"),
    })
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

add, deact, reset = st.tabs(["Add", "Deactivate", "Reset password"])
with add, st.form("add_user", clear_on_submit=False, width=480):
    st.text_input("Name", key="new_name", help="Letters, digits, . _ @ -")
    st.selectbox("Role", ["reviewer", "admin"], key="new_role")
    st.text_input("Password (8+ characters)", type="password", key="new_pw")
    st.text_input("Password again", type="password", key="new_pw2")
    st.form_submit_button("Add account", on_click=_add, type="primary")
active = [u.name for u in users if u.active]
with deact:
    if active:
        st.selectbox("Account", active, key="deactivate_name")
        st.button("Deactivate", key="deactivate", on_click=_deactivate)
with reset:
    if users:
        with st.form("reset_user", width=480):
            st.selectbox("Account", [u.name for u in users], key="reset_name")
            st.text_input("New password (8+ characters)", type="password", key="reset_pw")
            st.selectbox("Role", ["keep", "reviewer", "admin"], key="reset_role")
            st.form_submit_button("Reset", on_click=_reset)
