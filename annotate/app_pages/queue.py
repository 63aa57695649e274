"""Admin: fill the queue (import prompts, generate candidates) and steer it (reviewers per item, priority, gold).

Generating candidates needs the policy model, so it runs as a separate `rankloop generate` process: this app
never imports torch. Its output goes to a log file under runs/app-jobs/, shown here while it runs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import streamlit as st

from annotate.session import db_path, require_admin, workspace_dir
from store.agreement import list_gold, remove_gold, set_gold
from store.audit import log_event
from store.db import write
from store.models import list_models
from store.queue import set_priority, set_required_reviewers
from store.settings import set_setting
from store.status import queue_overview

db = db_path()
admin = require_admin()
ss = st.session_state
st.title("Queue")


@st.cache_resource(show_spinner=False)
def _jobs(workspace: str) -> list[dict]:
    """Background jobs this server started, per workspace (kept across reruns and sessions)."""
    return []


def _say(kind: str, text: str) -> None:
    ss["queue_msg"] = (kind, text)


msg = ss.pop("queue_msg", None)
if msg:
    getattr(st, msg[0])(msg[1])
by_round = queue_overview(db)["by_round"]
st.dataframe(by_round, hide_index=True, width="stretch")
rounds = [int(r) for r in by_round["round"]] if not by_round.empty else []

imp, gen, steer, gold = st.tabs(["Import prompts", "Generate candidates", "Reviewers and priority", "Gold"])
with imp:
    importer = getattr(importlib.import_module("store.imports"), "import_prompts", None) if importlib.util.find_spec(
        "store.imports") else None
    upload = st.file_uploader("Prompts file (JSONL, CSV or Parquet; one prompt or chat per row)", key="prompt_file")
    if importer is None:
        st.info("Prompt import is not available in this installation (store.imports.import_prompts is missing).")
    elif upload is not None and st.button("Import", key="import_prompts", type="primary"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(upload.name).name
            path.write_bytes(upload.getvalue())
            try:
                result = importer(db, path)
            except ValueError as e:  # InputError included: it names file, line and field
                st.error(str(e))
            else:
                counts = {k: v for k, v in dict(result).items() if k != "file"}
                write(db, lambda con: log_event(con, admin.name, "import.prompts", {"file": upload.name, **counts}))
                st.success(f"Imported {upload.name}: " + ", ".join(f"{k.replace('_', ' ')} {v}"
                                                                   for k, v in counts.items()))

with gen:
    policies = [m.name for m in list_models(db, kind="policy")]
    with st.form("generate", width=520):
        st.selectbox("Policy", policies or ["(default policy from rankloop.toml)"], key="gen_policy")
        st.number_input("Prompts", 1, 100000, 16, key="gen_prompts")
        st.number_input("Candidates per prompt (k)", 2, 16, 4, key="gen_k")
        st.number_input("Round", 0, 10000, max(rounds, default=0), key="gen_round")
        start = st.form_submit_button("Start", type="primary")
    if start:
        ws = workspace_dir()
        log_dir = ws / "runs" / "app-jobs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"generate-{time.strftime('%Y%m%d-%H%M%S')}.log"
        cmd = [sys.executable, "-m", "rankloop", "generate", "--workspace", str(ws), "--prompts",
               str(ss["gen_prompts"]), "--k", str(ss["gen_k"]), "--round", str(ss["gen_round"])]
        if policies:
            cmd += ["--policy", ss["gen_policy"]]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _jobs(str(ws)).append({"pid": proc.pid, "proc": proc, "log": str(log), "cmd": cmd[3:]})
        write(db, lambda con: log_event(con, admin.name, "generate.start", {"pid": proc.pid, "args": cmd[3:]}))
        st.success(f"Started `rankloop generate` (pid {proc.pid}); log: {log}")
    for job in reversed(_jobs(str(workspace_dir()))):
        code = job["proc"].poll()
        state = "running" if code is None else ("finished" if code == 0 else f"failed (exit {code})")
        with st.expander(f"pid {job['pid']}: {state}", expanded=code is None):
            st.code(Path(job["log"]).read_text(errors="replace")[-4000:] or "(no output yet)", language=None)
    st.button("Refresh", key="gen_refresh")

with steer:
    scope = st.selectbox("Apply to", ["all rounds", *rounds], key="steer_round")
    rnd = None if scope == "all rounds" else int(scope)
    left, right = st.columns(2)
    with left:
        n = st.number_input("Distinct reviewers per comparison (N)", 1, 50, 1, key="steer_n")
        if st.button("Set N", key="set_n"):
            changed = set_required_reviewers(db, int(n), actor=admin.name, round=rnd)
            if rnd is None:
                set_setting(db, "required_reviewers", int(n), actor=admin.name)
            _say("success", f"N = {n} on {changed} comparisons.")
            st.rerun()
    with right:
        prio = st.number_input("Priority (higher first within a round)", value=0.0, key="steer_priority")
        ids_text = st.text_input("Only these comparison ids (comma-separated, optional)", key="steer_ids")
        if st.button("Set priority", key="set_priority"):
            try:
                ids = [int(x) for x in ids_text.replace(" ", "").split(",") if x] or None
                changed = set_priority(db, float(prio), actor=admin.name, round=rnd if ids is None else None,
                                       comparison_ids=ids)
                _say("success", f"Priority {prio} on {changed} comparisons.")
            except ValueError as e:
                _say("error", f"Not changed: {e} (pick a round or list ids)")
            st.rerun()

with gold:
    st.caption("A gold item is a comparison with a known answer, mixed into reviewers' queues at the gold rate "
               "(Settings). Write the answer with response ids, best first: `12 > 14 = 13`, or `all bad`.")
    with st.form("gold", width=520):
        st.number_input("Comparison id", 1, None, None, key="gold_id")
        st.text_input("Answer", key="gold_answer", placeholder="12 > 14 = 13")
        st.text_input("Note (optional)", key="gold_note")
        save = st.form_submit_button("Save gold answer")
    if save:
        text = (ss.get("gold_answer") or "").strip().lower()
        try:
            ranking = None if text == "all bad" else [[int(x) for x in g.split("=")] for g in text.split(">")]
            set_gold(db, int(ss["gold_id"] or 0), actor=admin.name, ranking=ranking, all_bad=ranking is None,
                     note=ss.get("gold_note") or None)
            st.success(f"Comparison {ss['gold_id']} is gold now.")
        except ValueError as e:
            st.error(f"Not saved: {e}")
    items = list_gold(db)
    if items:
        st.dataframe(items, hide_index=True, width="stretch")
        drop = st.selectbox("Remove gold from", [g["comparison_id"] for g in items], key="gold_drop")
        if st.button("Remove", key="gold_remove"):
            remove_gold(db, int(drop), actor=admin.name)
            st.rerun()
