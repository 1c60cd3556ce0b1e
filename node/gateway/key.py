"""The node's own Nix signing key: the gateway adds its signature to every narinfo it
serves, so `trusted-public-keys` needs only this one key, and Nix accepts a path only
through this node (which checked the quorum) rather than through any builder's key alone.

`<data-dir>/cache.key` (mode 0600) and `<data-dir>/cache.pub` hold it (`ferry init` creates
them with `ferry trust keygen`; a node started without them makes them)."""

from __future__ import annotations

import os
import socket

from store import userfile
from trust import keyfile
from trust.key import KeyFormatError, SecretKey

SECRET = "cache.key"
PUBLIC = "cache.pub"


def default_name(public: bytes) -> str:
    """`ferry-<host>-<6 hex digits of the key>`: two nodes on one host, or machines cloned
    before their keys were made, must not share a name in `trusted-public-keys` (Nix
    keeps one key per name)."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-") or "node"
    return f"ferry-{host}-{public[:3].hex()}"


def load_or_create(data_dir: str, path: str | None = None) -> SecretKey:
    """The key at `path` (it must exist), else the data directory's, made if missing,
    with its public half kept beside it. Raises KeyFileError naming an unusable file."""
    if path is not None:
        return keyfile.load_secret(path)
    path = os.path.join(data_dir, SECRET)
    if not os.path.exists(path):
        key = SecretKey.generate("ferry-node")
        try:
            key = SecretKey(default_name(key.public.key), key.seed)
        except KeyFormatError:
            pass  # a host name no key name can carry: "ferry-node"
        try:
            keyfile.write_secret(path, key)
        except keyfile.KeyFileError:
            pass  # another process made it first: use theirs
    key = keyfile.load_secret(path)
    public = os.path.join(data_dir, PUBLIC)
    text = key.public.encode() + "\n"
    try:
        with open(public) as f:
            current = f.read()
    except OSError:
        current = None
    if current != text:
        userfile.write_atomically(public, text.encode(), "the node's public key file")
    return key
