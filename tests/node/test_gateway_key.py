"""The node's own Nix signing key: made on first start, kept, and named so that two
nodes never share a name in `trusted-public-keys`."""

from __future__ import annotations

import socket
from pathlib import Path

from node.gateway import key as gateway_key


def test_two_nodes_on_one_host_get_keys_of_different_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ka, kb = gateway_key.load_or_create(str(a)), gateway_key.load_or_create(str(b))
    assert ka.name != kb.name  # Nix keeps one key per name: the second would replace the first
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-")
    assert ka.name == f"ferry-{host}-{ka.public.key[:3].hex()}"
    assert gateway_key.load_or_create(str(a)) == ka  # kept across starts
    assert (a / gateway_key.PUBLIC).read_text() == ka.public.encode() + "\n"
