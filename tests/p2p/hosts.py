"""Real py-libp2p hosts on loopback, for tests of what `make_host` builds."""

from __future__ import annotations

import contextlib

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair

from p2p.host import make_host, quiet_libp2p

LOCAL = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


async def _close(host: IHost) -> None:
    with trio.CancelScope(shield=True):
        await host.close()


async def two_hosts(stack: contextlib.AsyncExitStack) -> tuple[IHost, IHost]:
    """Two hosts listening on 127.0.0.1, not connected; closed as `stack` unwinds."""
    quiet_libp2p()
    a, b = (make_host(create_new_key_pair()) for _ in range(2))
    for h in (a, b):
        await stack.enter_async_context(h.run([LOCAL]))
        stack.push_async_callback(_close, h)
    return a, b
