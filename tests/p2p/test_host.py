"""What `make_host` sets on every connection, between real py-libp2p hosts on loopback."""

from __future__ import annotations

import contextlib
import socket

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2p.host import pace_writes
from p2p.stream import UNSENT_BYTES
from tests.p2p.hosts import two_hosts


def _sockets(host: IHost) -> list[socket.socket]:
    out = []
    for conns in host.get_network().get_connections_map().values():
        for conn in conns if isinstance(conns, list) else [conns]:
            raw = conn.muxed_conn.secured_conn.conn.conn.stream.stream  # type: ignore[attr-defined]
            assert isinstance(raw, trio.SocketStream)
            out.append(raw.socket)
    return out


async def test_both_ends_of_a_connection_hold_little_unsent() -> None:
    """The dialer's and the listener's sockets both cap their unsent bytes, so a server's
    write takes as long as the link needs and its measure of the link is the link's."""
    async with contextlib.AsyncExitStack() as stack:
        a, b = await two_hosts(stack)
        # A stream both ends have seen: the listener has announced the connection by then.
        opened = trio.Event()

        async def handler(stream: INetStream) -> None:
            opened.set()
            await stream.close()

        a.set_stream_handler(TProtocol("/ferry-test/1"), handler)
        await b.connect(info_from_p2p_addr(a.get_addrs()[0].encapsulate(f"/p2p/{a.get_id()}")))
        with trio.fail_after(10):
            stream = await b.new_stream(a.get_id(), [TProtocol("/ferry-test/1")])
            await opened.wait()
        await stream.close()
        assert _sockets(a) and _sockets(b)
        for s in _sockets(a) + _sockets(b):
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == UNSENT_BYTES


def test_a_connection_without_a_tcp_socket_is_left_alone() -> None:
    class Muxed:
        secured_conn = None

    class Conn:
        muxed_conn = Muxed()

    assert pace_writes(Conn()) is False  # type: ignore[arg-type]
