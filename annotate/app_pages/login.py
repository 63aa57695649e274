"""Log in: name and password. Failed attempts are rate-limited per account and written to the audit log."""

from __future__ import annotations

import streamlit as st

from annotate.cookies import NOTICES, keep_as_cookie
from annotate.session import db_path, workspace_dir
from annotate.sso import sso_section
from store.users import login


def _submit() -> None:
    result = login(db_path(), st.session_state.get("login_name", "").strip(), st.session_state.get("login_pw", ""))
    st.session_state["login_pw"] = ""
    if result.token:
        st.session_state["token"] = result.token
        st.session_state.pop("login_notice", None)
        keep_as_cookie(result.token)
    else:
        st.session_state["login_error"] = result.message


st.title("rankloop")
st.caption("Human feedback for model outputs. Log in with the account an admin made for you.")
notice = st.session_state.pop("login_notice", None) or NOTICES.get(st.query_params.get("notice", ""))
st.query_params.clear()
if notice:
    st.info(notice)
error = st.session_state.pop("login_error", None)
if error:
    st.error(error)
with st.form("login", enter_to_submit=True, width=420):
    st.text_input("Name", key="login_name", autocomplete="username")
    st.text_input("Password", key="login_pw", type="password", autocomplete="current-password")
    st.form_submit_button("Log in", type="primary", on_click=_submit)
sso = sso_section(str(workspace_dir()))
if sso is not None:
    st.button(sso.button_label, key="sso_login", on_click=st.login, icon=":material/key:")
