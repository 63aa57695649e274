"""reward: reward models (the default linear probe, TRL fine-tuning), their evaluation and scoring.

See docs/architecture.md."""
