"""The annotation guidelines an admin wrote (Queue page), in full."""

from __future__ import annotations

import streamlit as st

from annotate.render import safe_markdown
from annotate.session import db_path, require_user
from store.settings import get_settings

db = db_path()
require_user()
st.title("Guidelines")
text = get_settings(db)["guidelines"]
if text:
    st.markdown(safe_markdown(text))
else:
    st.info("No guidelines yet: an admin writes them on the Settings page.")
