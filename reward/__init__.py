"""reward: see ARCHITECTURE.md."""
