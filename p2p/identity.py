"""The node's libp2p identity: an ed25519 key kept in the data directory, so the peer ID
(and every multiaddr others have for us) survives restarts.

The file is a Nix-format secret key (`ferry-node:base64(seed‖public)`, mode 0600), the same
format and the same careful handling as builder keys, but it is never a builder key: a
node's identity says who is talking, not who built what.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trust import keyfile
from trust.key import SecretKey

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

FILE = "identity.key"
NAME = "ferry-node"


def load_or_create(data_dir: str) -> KeyPair:
    """Raises KeyFileError (with the file named) if the file exists but is unusable."""
    # Imported here: libp2p takes most of a second to import, and `ferry doctor` and
    # `ferry init` name this module's files without needing the key.
    from libp2p.crypto.ed25519 import create_new_key_pair

    path = os.path.join(data_dir, FILE)
    try:
        key = keyfile.load_secret(path)
    except keyfile.KeyFileError:
        if os.path.exists(path):
            raise
        os.makedirs(data_dir, exist_ok=True)
        key = SecretKey.generate(NAME)
        try:
            keyfile.write_secret(path, key)
        except keyfile.KeyFileError:
            key = keyfile.load_secret(path)  # another process created it first: use theirs
    return create_new_key_pair(key.seed)
