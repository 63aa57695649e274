"""annotate: the Streamlit app (see docs/architecture.md)."""
