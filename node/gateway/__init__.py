"""The Nix binary-cache endpoint: unmodified Nix substitutes through the node."""
