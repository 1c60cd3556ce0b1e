"""systemd's service notification protocol (sd_notify(3)): `READY=1` once the node
accepts everything `node.addr` promises, `STOPPING=1` when it begins to stop. With
`Type=notify`, `systemctl start ferry` returns, and units ordered after ferry start,
only when the node is really up.

A datagram of `KEY=VALUE` lines to the AF_UNIX socket named by `NOTIFY_SOCKET` (`@` at
its start: the abstract namespace). Without that variable (not run by systemd) it does
nothing."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def encode(**fields: str) -> bytes:
    """`KEY=VALUE` lines; a value may not hold a line break."""
    for key, value in fields.items():
        if "\n" in value or "=" in key or "\n" in key:
            raise ValueError(f"sd_notify field {key!r} holds a line break or '='")
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode()


def send(message: bytes, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `message` to the service manager, if one listens; False if none does. A
    failure is logged, never raised: the node runs the same without systemd."""
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message)
    except OSError as e:
        log.warning("cannot tell the service manager %r: %s", message, e)
        return False
    return True
