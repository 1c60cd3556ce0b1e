"""The ferry node: CLI, store, daemon, gateway."""
