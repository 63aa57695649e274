"""What `rankloop serve` runs: the Streamlit app (annotate/app.py), the login-cookie routes (annotate.cookies) and,
when `[sso]` is configured, the secrets Streamlit's `st.login` reads (annotate.sso)."""

import os
from pathlib import Path

import streamlit as st

from annotate.cookies import routes
from annotate.session import WORKSPACE_ENV
from annotate.sso import streamlit_secrets

app = st.App("app.py", routes=routes(), secrets=streamlit_secrets(Path(os.environ[WORKSPACE_ENV])))
