"""What `rankloop serve` runs: the Streamlit app (annotate/app.py) plus the login-cookie routes (annotate.cookies)."""

import streamlit as st

from annotate.cookies import routes

app = st.App("app.py", routes=routes())
