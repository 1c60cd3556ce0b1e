"""The node daemon: config, the running node, and its control API."""
