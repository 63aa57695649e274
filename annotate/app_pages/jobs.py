"""Admin: launch reward training, policy training, `round next`, `generate` and `loop` as background jobs, and
follow them (status, progress, streaming log, cancel). The jobs run in their own processes (rankloop.jobs), so the
reviewers' pages keep working meanwhile."""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from annotate.jobs_panel import launch_form, show_job
from annotate.session import db_path, require_admin
from rankloop.job_commands import COMMANDS
from rankloop.jobs import refresh

db = db_path()
admin = require_admin()
st.title("Runs")

with st.expander("Launch a job", expanded=True):
    command = st.selectbox("Command", list(COMMANDS), key="job_command",
                           format_func=lambda c: f"rankloop {c}")
    launch_form(command, admin.name)

@st.fragment(run_every=2.0)
def live() -> None:
    """Redrawn every 2 s (a timer that does not depend on what the last full run saw: a job launched or ended
    between two runs still shows up); a full rerun when the last active job ends (models and reports change)."""
    current = refresh(db)
    was_active = st.session_state.get("jobs_active", False)
    st.session_state["jobs_active"] = any(j.active for j in current)
    if not current:
        st.info("No jobs yet: launch one above. Jobs started on the command line are not listed here; their runs "
                "are on the 'Models and reports' page.")
        return
    st.dataframe(pd.DataFrame([{
        "job": j.id, "status": j.status, "command": j.command,
        "arguments": shlex.join(j.argv), "by": j.created_by, "created": j.created_at, "started": j.started_at,
        "finished": j.finished_at, "exit code": j.exit_code,
    } for j in current]), hide_index=True, width="stretch")
    ids = [j.id for j in current]
    chosen = st.selectbox("Job", ids, key="job_shown", format_func=lambda i: f"job {i}")
    show_job(next(j for j in current if j.id == chosen), admin.name)
    if was_active and not st.session_state["jobs_active"]:
        st.rerun()


st.subheader("Jobs")
live()
