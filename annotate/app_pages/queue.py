"""Admin: fill the queue (import prompts, generate candidates) and steer it (reviewers per item, priority, gold).

Generating candidates needs the policy model, so it runs as a background job (rankloop.jobs: `rankloop generate`
in its own process; this app never imports torch), shown here and on the Runs page.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

import streamlit as st

from annotate.jobs_panel import launch_form, show_job
from annotate.session import db_path, require_admin
from store.agreement import list_gold, remove_gold, set_gold
from store.audit import log_event
from store.db import write
from store.jobs import list_jobs
from store.queue import active_leases, release_lease, set_priority, set_required_reviewers
from store.settings import set_setting
from store.status import queue_overview

db = db_path()
admin = require_admin()
ss = st.session_state
st.title("Queue")


def _say(kind: str, text: str) -> None:
    ss["queue_msg"] = (kind, text)


msg = ss.pop("queue_msg", None)
if msg:
    getattr(st, msg[0])(msg[1])
by_round = queue_overview(db)["by_round"]
st.dataframe(by_round, hide_index=True, width="stretch")
rounds = [int(r) for r in by_round["round"]] if not by_round.empty else []

imp, gen, steer, gold, held = st.tabs(["Import prompts", "Generate candidates", "Reviewers and priority", "Gold",
                                       "Active leases"])
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
    st.caption("Sampling needs the policy model, so it runs as a background job (this app never imports torch); "
               "the Runs page lists every job with its log.")
    launch_form("generate", admin.name, settings=False)
    newest = next((j for j in list_jobs(db, limit=20) if j.command == "generate"), None)
    if newest is not None:
        show_job(newest, admin.name, lines=40, height=240)
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
        prio = st.number_input("Priority (higher first across rounds; a round of age counts 0.5)", value=0.0,
                               key="steer_priority")
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

with held:
    st.caption("Items held by reviewers right now. A lease ends when its reviewer submits, skips or logs out, or "
               "when it expires (Settings: lease minutes); releasing one here gives the item back to the queue at "
               "once, and that reviewer's submit of it is refused.")
    leases = active_leases(db)
    if not leases:
        st.info("No item is leased right now.")
    else:
        st.dataframe(leases, hide_index=True, width="stretch")
        pick = st.selectbox("Lease", [x["lease"] for x in leases], key="release_lease_pick",
                            format_func=lambda lid: next(f"lease {x['lease']}: item {x['comparison']}, "
                                                         f"{x['reviewer']}" for x in leases if x["lease"] == lid))
        if st.button("Release lease", key="release_lease"):
            released = release_lease(db, int(pick), actor=admin.name)
            _say("success" if released else "warning",
                 f"Lease {pick} released." if released else f"Lease {pick} had already ended.")
            st.rerun()
