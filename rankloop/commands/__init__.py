"""The `rankloop` subcommands, one module per group; `rankloop.cli` assembles them."""
