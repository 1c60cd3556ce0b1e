"""A py-libp2p host set up for a ferry node.

py-libp2p's defaults are wrong for us in three ways (measured, see DESIGN.md): it
accepts plaintext and secio connections, its auto-connector tries to hold 50 outbound
connections, and its connection manager prunes above 200. A node talks to a handful of
peers it chose (bootstrap, providers of what it fetches); everything is encrypted with
noise, multiplexed with yamux (whose frame writes we make safe to cancel, see cancel_safe_frames).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import SupportsIndex

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

from p2p.stream import UNSENT_BYTES

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


class WindowOverrun(trio.TooSlowError):
    """A peer sent a stream more data than its receive window allowed.

    A subclass of TooSlowError because that is the one error py-libp2p's yamux reader
    answers by closing the whole connection (others only close the stream, or are
    logged and ignored): a peer that ignores flow control is not kept."""


class _GuardedBuffer(bytearray):
    """A yamux stream's receive buffer that refuses data past the stream's window."""

    def __init__(self, muxed: Yamux, stream_id: int, on_overrun: Callable[[str, int], None]):
        super().__init__()
        self._muxed = muxed
        self._stream_id = stream_id
        self._on_overrun = on_overrun

    def extend(self, data: Iterable[SupportsIndex]) -> None:
        # py-libp2p appends a DATA frame's payload here, then takes it off the window.
        stream = self._muxed.streams.get(self._stream_id)
        size = len(data) if isinstance(data, bytes | bytearray | memoryview) else 0
        if stream is not None and size > max(stream.recv_window, 0):
            excess = size - max(stream.recv_window, 0)
            self._on_overrun(str(self._muxed.peer_id), excess)
            raise WindowOverrun(
                f"peer {self._muxed.peer_id} sent {excess:,} bytes past the window of stream "
                f"{self._stream_id}"
            )
        super().extend(data)


class _GuardedBuffers(dict[int, bytearray]):
    def __init__(self, muxed: Yamux, on_overrun: Callable[[str, int], None]) -> None:
        super().__init__()
        self._muxed = muxed
        self._on_overrun = on_overrun

    def __setitem__(self, stream_id: int, buffer: bytearray) -> None:
        guarded = _GuardedBuffer(self._muxed, stream_id, self._on_overrun)
        bytearray.extend(guarded, buffer)
        super().__setitem__(stream_id, guarded)


def guard_windows(muxed: Yamux, on_overrun: Callable[[str, int], None]) -> None:
    """Refuse data a peer sends past a stream's receive window, and close its connection.

    py-libp2p's yamux buffers such data without limit (it logs a warning and carries
    on), so one peer could fill the node's memory. `on_overrun(peer, excess bytes)` is
    told first (the node bans the peer). Streams opened before this call are guarded from
    their next buffer on; ferry calls it as the connection is announced."""
    if isinstance(muxed.stream_buffers, _GuardedBuffers):
        return
    guarded = _GuardedBuffers(muxed, on_overrun)
    for stream_id, buffer in list(muxed.stream_buffers.items()):
        guarded[stream_id] = buffer
    muxed.stream_buffers = guarded


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


class _GuardedConnections(Notifee):
    def __init__(self, on_overrun: Callable[[str, int], None]) -> None:
        self.on_overrun = on_overrun

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        if isinstance(conn.muxed_conn, Yamux):
            cancel_safe_frames(conn.muxed_conn)
            guard_windows(conn.muxed_conn, self.on_overrun)
            pace_writes(conn)


def pace_writes(conn: INetConn, unsent: int = UNSENT_BYTES) -> bool:
    """Caps what the kernel holds unsent on `conn`'s TCP socket (TCP_NOTSENT_LOWAT);
    False if the connection has no TCP socket this can reach."""
    layer: object = conn.muxed_conn
    for name in ("secured_conn", "conn", "conn", "stream", "stream"):
        layer = getattr(layer, name, None)
    if not isinstance(layer, trio.SocketStream):
        return False
    try:
        layer.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, unsent)
    except OSError:
        return False
    return True


def _log_overrun(peer: str, excess: int) -> None:
    log.warning("peer %s sent %d bytes past a stream's window: connection closed", peer, excess)


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
    on_overrun: Callable[[str, int], None] = _log_overrun,
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
    # py-libp2p's yamux gives receive window back after every read by default: a
    # WINDOW_UPDATE frame per read, which the peer must take in too (a fifth of a round
    # trip on loopback: 1.2 -> 1.0 ms, bench/ondemand.py). Unless told otherwise, it gives
    # it back in batches of half the window, as go-yamux does. Read at each read.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
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
    host.get_network().register_notifee(_GuardedConnections(on_overrun))
    return host


async def _dial_nobody() -> None:
    return None
