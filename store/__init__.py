"""Nix store formats shared by every ferry component.

Everything here is pure (no I/O beyond what a caller hands in) so the node, the
simulator and the fuzzers drive the same code: Nix32, hashes, store paths, NAR,
narinfo, chunking and ferry's manifests.
"""
