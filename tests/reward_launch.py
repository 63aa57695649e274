"""Entry point for `accelerate launch` in tests: the reward commands without the rest of the CLI."""

from tests.reward_data import reward_cli

if __name__ == "__main__":
    reward_cli()()
