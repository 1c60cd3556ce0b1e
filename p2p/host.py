"""A py-libp2p host set up for a ferry node.

py-libp2p's defaults are wrong for us in three ways (measured, see DESIGN.md): it
accepts plaintext and secio connections, its auto-connector tries to hold 50 outbound
connections, and its connection manager prunes above 200. A node talks to a handful of
peers it chose (bootstrap, providers of what it fetches); everything is encrypted with
noise, multiplexed with yamux.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as NoiseTransport

SECURITY = (NOISE,)


@dataclass(frozen=True)
class HostLimits:
    max_connections: int = 64
    max_connections_per_peer: int = 1  # one yamux connection carries all our streams
    dial_timeout: float = 10.0


def quiet_libp2p() -> None:
    """py-libp2p logs routine events (a peer closing a DHT stream) as errors."""
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def make_host(keys: KeyPair, limits: HostLimits = HostLimits(), *, mdns: bool = False,
              listen: Sequence[multiaddr.Multiaddr] = ()) -> IHost:
    config = ConnectionConfig(
        max_connections=limits.max_connections,
        # min_connections/low_watermark 0: no background dialing to "fill up" to a quota;
        # we connect to the peers we need.
        min_connections=0,
        low_watermark=0,
        high_watermark=max(1, limits.max_connections - 8),
        max_connections_per_peer=limits.max_connections_per_peer,
        dial_timeout=limits.dial_timeout,
        auto_connect_interval=3600.0,
    )
    sec_opt = {TProtocol(NOISE): NoiseTransport(keys, noise_privkey=new_x25519().private_key)}
    host = new_host(key_pair=keys, sec_opt=sec_opt, muxer_opt=create_yamux_muxer_option(),
                    connection_config=config, enable_mDNS=mdns, listen_addrs=list(listen) or None)
    # The auto-connector dials every peer in the peerstore up to the midpoint of the
    # watermarks, whatever they are set to, and redials peers we disconnected on purpose
    # (a banned one). A node dials whom it needs: bootstrap peers and providers.
    host.get_network().auto_connector.maybe_connect = _dial_nobody  # type: ignore[attr-defined,method-assign]
    return host


async def _dial_nobody() -> None:
    return None
