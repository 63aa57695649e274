"""rl: see ARCHITECTURE.md."""
