"""rl: sampling, the policy trainers (SFT, DPO, PPO, RLOO/GRPO), policy evaluation and rounds.

See docs/architecture.md."""
