"""Nix-format keys, signed build claims and the quorum policy."""
