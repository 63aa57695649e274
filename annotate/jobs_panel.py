"""Drawing background jobs (rankloop.jobs): the launch form of one command, and one job's progress, log and cancel
button. Used by the Runs page and by the Queue page's "Generate candidates" tab."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import streamlit as st

from annotate.session import db_path, workspace_dir
from rankloop.job_commands import COMMANDS, JobInputError, Option
from rankloop.jobs import cancel, launch, read_log
from store.jobs import JobRow

LABELS = {"lr": "Learning rate", "k": "Candidates per comparison (k)", "max-new-tokens": "Max new tokens"}


def _widget(command: str, option: Option) -> Any:
    key = f"job_{command}_{option.name}"
    label = LABELS.get(option.name, option.name.replace("-", " ").capitalize())
    if option.kind == "flag":
        return st.checkbox(label, key=key, help=option.help)
    if option.kind == "choice":
        choices = ["", *option.choices]
        return st.selectbox(label, choices, index=choices.index(option.default or ""), key=key, help=option.help)
    if option.kind in ("int", "float"):
        whole = option.kind == "int"
        return st.number_input(label, value=option.default, min_value=option.minimum, key=key, help=option.help,
                               step=1 if whole else None, format="%d" if whole else "%g",
                               placeholder="default")
    return st.text_input(label, value=option.default or "", key=key, help=option.help, placeholder="default")


def launch_form(command: str, actor: str, *, settings: bool = True) -> JobRow | None:
    """The form for `command`; on submit the job is checked and launched. Returns the new job, or None."""
    spec = COMMANDS[command]
    with st.form(f"launch_{command}", width=640):
        st.caption(spec.help)
        values = {o.name: _widget(command, o) for o in spec.options}
        lines = ""
        if settings and spec.sections:
            lines = st.text_area("More settings (FIELD=VALUE, one per line)", key=f"job_{command}_settings",
                                 help=f"Any field of [{'], ['.join(spec.sections)}] in rankloop.toml, e.g. "
                                      "learning_rate=5e-5" + ("; reward.X / dpo.X / ppo.X reach the trainers."
                                                              if len(spec.sections) > 1 else "."))
        submitted = st.form_submit_button("Launch", type="primary")
    if not submitted:
        return None
    try:
        job = launch(workspace_dir(), db_path(), command, values, lines, actor)
    except JobInputError as e:
        st.error(f"Not launched: {e}")
        return None
    st.session_state["job_shown"] = job.id  # the Runs page follows the new job
    where = "started" if job.status != "queued" else "queued (another job is running; it starts after that one)"
    st.success(f"Job {job.id} {where}: `rankloop {shlex.join(job.argv)}`")
    return job


def inside_workspace(path: str) -> bool:
    return Path(path).resolve().is_relative_to(workspace_dir().resolve())


def show_job(job: JobRow, actor: str, *, lines: int = 200, height: int = 360) -> None:
    """Status, progress bar (from the log's newest progress bar), the log's tail, and a cancel button."""
    st.markdown(f"**Job {job.id}** `{job.status}` · `rankloop {shlex.join(job.argv)}` "
                f"· by {job.created_by}")
    if job.elsewhere():  # team mode: the runner and its log are on another machine
        st.info(f"This job runs on **{job.runner_host}**: its log and Cancel are on a server on that machine.")
        return
    view = read_log(job.log_path, lines) if inside_workspace(job.log_path) else None
    if view is None:
        st.warning("This job's log lies outside the workspace: not shown.")
        return
    if job.active and view.total:
        detail = f" [{view.detail[:100]}]" if view.detail else ""
        st.progress(min(1.0, view.done / view.total), text=f"{view.done}/{view.total}{detail} · {view.stage[:120]}")
    elif job.active and view.stage:
        st.caption(view.stage[:200])
    if job.error:
        st.error(job.error)
    st.code(view.text or "(no output yet)", language=None, height=height)
    if job.active:
        again = job.cancel_requested_at is not None
        if st.button("Kill" if again else "Cancel", key=f"cancel_job_{job.id}",
                     help="Interrupt the command (its run is closed as cancelled); killed after a grace period."):
            cancel(db_path(), job.id, actor)
            st.rerun()
        if again:
            st.caption(f"Cancel requested by {job.cancel_requested_by}; waiting for the command to stop.")
