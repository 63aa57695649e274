"""The annotation app's entry: a router that shows the login page, or the pages the user's role allows.

Run it with `rankloop serve`. Pages live in annotate/app_pages/; this file only decides which ones exist for
this session and draws the sidebar (who is logged in, logout).
"""

from __future__ import annotations

import streamlit as st

from annotate.cookies import navigate
from annotate.session import current_user, db_path
from store.users import end_session

st.set_page_config(page_title="rankloop", layout="wide")


def review_pages(default: bool) -> list:
    return [
        st.Page("app_pages/rank.py", title="Rank", default=default),
        st.Page("app_pages/mine.py", title="My judgments"),
        st.Page("app_pages/guidelines.py", title="Guidelines"),
    ]


ADMIN_PAGES = [  # admins land on Overview; Rank leases nothing until they choose to review
    st.Page("app_pages/overview.py", title="Overview", default=True),
    st.Page("app_pages/agreement.py", title="Agreement"),
    st.Page("app_pages/reviewers.py", title="Reviewers"),
    st.Page("app_pages/queue.py", title="Queue"),
    st.Page("app_pages/jobs.py", title="Runs"),
    st.Page("app_pages/runs.py", title="Models and reports"),
    st.Page("app_pages/export.py", title="Export"),
    st.Page("app_pages/settings.py", title="Settings"),
    st.Page("app_pages/audit.py", title="Audit log"),
]


def logout() -> None:
    """End the session (its leases go back to the queue when it was the user's last), then clear the cookie."""
    token = st.session_state.get("token")
    if token:
        end_session(db_path(), token)
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state["login_notice"] = "Logged out."
    navigate("/rankloop/logout")  # the cookie's session ends there too, and the cookie is cleared


user = current_user()
st.session_state["user"] = user
if user is None:
    page = st.navigation([st.Page("app_pages/login.py", title="Log in")])
else:
    with st.sidebar:
        st.caption(f"Logged in as **{user.name}** ({user.role})")
        st.button("Log out", key="logout", on_click=logout)
    pages = {"Admin": ADMIN_PAGES, "Review": review_pages(False)} if user.role == "admin" else review_pages(True)
    page = st.navigation(pages)
page.run()
