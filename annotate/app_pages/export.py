"""Admin: download the exports `rankloop export` writes (preference pairs, KTO or SFT rows, with a manifest).

The export itself is store.export's; this page writes it to a temporary folder and offers the two files.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import tempfile
from pathlib import Path

import streamlit as st

from annotate.session import db_path, require_admin
from store.audit import log_event
from store.db import write

db = db_path()
admin = require_admin()
ss = st.session_state
st.title("Export")
module = importlib.import_module("store.export") if importlib.util.find_spec("store.export") else None
if module is None or not hasattr(module, "export"):
    st.info("Exports are not available in this installation (store.export.export is missing).")
    st.stop()

kinds = list(getattr(module, "KINDS", ("pairs",)))
styles = list(getattr(module, "STYLES", ("standard",)))
suffixes = list(getattr(module, "SUFFIXES", (".jsonl",)))
with st.form("export", width=560):
    st.selectbox("Rows", kinds, key="export_kind", help="pairs: chosen/rejected; kto: labelled single answers; "
                 "sft: best answers and reviewers' edits.")
    st.selectbox("Style", styles, key="export_style", help="TRL dataset style: text or chat messages.")
    st.selectbox("Format", suffixes, key="export_suffix")
    st.checkbox("Aggregate over reviewers (one row per comparison pair)", key="export_aggregate")
    go = st.form_submit_button("Prepare download", type="primary")
if go and (ss["export_kind"] not in kinds or ss["export_suffix"] not in suffixes):
    st.error("Unknown export kind or format.")
elif go:
    name = f"{ss['export_kind']}{ss['export_suffix']}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        try:
            manifest = module.export(db, ss["export_kind"], out, style=ss["export_style"],
                                     aggregate=bool(ss["export_aggregate"]))
        except ValueError as e:
            st.error(str(e))
        else:
            details = {"file": name, "style": ss["export_style"], "aggregate": bool(ss["export_aggregate"]),
                       "counts": manifest.get("counts"), "sha256": manifest.get("sha256")}
            write(db, lambda con: log_event(con, admin.name, "export.download", details))
            ss["export_blob"] = (name, out.read_bytes(), json.dumps(manifest, indent=2, default=str))
blob = ss.get("export_blob")
if blob:
    name, data, manifest_text = blob
    st.success(f"{name}: {len(data):,} bytes")
    with st.container(horizontal=True):
        st.download_button(f"Download {name}", data, file_name=name, key="export_download", on_click="ignore",
                           type="primary")
        st.download_button("Download manifest", manifest_text, file_name=f"{name}.manifest.json",
                           key="export_manifest", on_click="ignore")
    st.code(manifest_text, language="json")
