"""A py-libp2p host set up for a ferry node.

py-libp2p's defaults are wrong for us in three ways (measured, see DESIGN.md): it
accepts plaintext and secio connections, its auto-connector tries to hold 50 outbound
connections, and its connection manager prunes above 200. A node talks to a handful of
peers it chose (bootstrap, providers of what it fetches); everything is encrypted with
noise, multiplexed with yamux (whose frame writes we make safe to cancel, see cancel_safe_frames).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger(__name__)

SECURITY = (NOISE,)
FRAME_STALL = 60.0  # a yamux frame the peer's TCP has not taken in this long ends the connection


def cancel_safe_frames(muxed: Yamux) -> None:
    """Make every yamux frame write on this connection immune to cancellation.

    py-libp2p encrypts a frame (advancing the noise nonce) and then sends it; a task
    cancelled in between, or half-way through the send, leaves the peer unable to
    decrypt anything after it ("Failed authentication of message") and the whole
    connection drops. Ferry cancels freely (timeouts, finished fetch sessions), so each
    frame is written under a shield. Waiting for flow-control window happens before
    the frame write and stays cancellable. (py-libp2p builds `Yamux` itself, so the
    instance is adjusted rather than subclassed.)"""
    if getattr(muxed, "_ferry_cancel_safe", False):
        return
    write = muxed._write_frame

    async def write_whole_frame(data: bytes) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_STALL) as stall:
                await write(data)
            if stall.cancelled_caught:
                # Part of a frame may be on the wire: nothing after it would decrypt. Close
                # the transport itself (a GO_AWAY frame would be one more stuck write).
                log.info(
                    "peer %s took no data for %.0f s: closing the connection",
                    muxed.peer_id,
                    FRAME_STALL,
                )
                with trio.move_on_after(5):
                    await muxed.secured_conn.close()
                raise ConnectionClosedError(f"peer {muxed.peer_id} stopped reading")

    muxed._write_frame = write_whole_frame  # type: ignore[method-assign]
    muxed._ferry_cancel_safe = True  # type: ignore[attr-defined]


class Notifee(INotifee):
    """A network watcher that ignores every event it does not override."""

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class _CancelSafeConnections(Notifee):
    async def connected(self, network: INetwork, conn: INetConn) -> None:
        if isinstance(conn.muxed_conn, Yamux):
            cancel_safe_frames(conn.muxed_conn)


@dataclass(frozen=True)
class HostLimits:
    max_connections: int = 64
    max_connections_per_peer: int = 1  # one yamux connection carries all our streams
    dial_timeout: float = 10.0


def quiet_libp2p() -> None:
    """py-libp2p logs routine events (a peer closing a DHT stream) as errors."""
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def make_host(
    keys: KeyPair,
    limits: HostLimits = HostLimits(),
    *,
    mdns: bool = False,
    listen: Sequence[multiaddr.Multiaddr] = (),
) -> IHost:
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
    host = new_host(
        key_pair=keys,
        sec_opt=sec_opt,
        muxer_opt={TProtocol(YAMUX): Yamux},
        connection_config=config,
        enable_mDNS=mdns,
        listen_addrs=list(listen) or None,
    )
    # The auto-connector dials every peer in the peerstore up to the midpoint of the
    # watermarks, whatever they are set to, and redials peers we disconnected on purpose
    # (a banned one). A node dials whom it needs: bootstrap peers and providers.
    host.get_network().auto_connector.maybe_connect = _dial_nobody  # type: ignore[attr-defined]
    host.get_network().register_notifee(_CancelSafeConnections())
    return host


async def _dial_nobody() -> None:
    return None
