"""The relay's and the punch's messages (strict, bounded), and the relay service's
limits, driven through in-memory streams (the NAT tests run it between real nodes)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from libp2p.network.stream.exceptions import StreamReset
from libp2p.peer.id import ID

from node.daemon.config import NodeConfig
from node.daemon.relay import Framed, RelayService, circuit_relay
from node.exchange.limits import PeerLimits
from p2p import frame, punch, relay

PEERS = [
    "12D3KooWLnTwhNKn5XkZkTnPsVxY7vWzRvQcyyDnRDpTaxTvSeps",
    "12D3KooWD4Kg55cSxgTefD2cGoBYp6KeUqMc6cFcY2wBsK9L8skF",
    "12D3KooWMFXJJav2ky8iPkwgFYHDHKyrCi9sC9JLVvHhTL7mC4yZ",
]
peer_ids = st.sampled_from(PEERS)
ips = st.one_of(st.just(""), st.ip_addresses().map(str))
counts = st.integers(0, 1 << 40)
relay_messages = st.one_of(
    st.just(relay.Reserve()),
    st.builds(relay.Reserved, st.integers(0, 1 << 31), ips),
    st.builds(relay.Connect, peer_ids),
    st.builds(relay.Connected, ips, ips, counts, st.integers(0, 1 << 31)),
    st.builds(relay.Incoming, peer_ids, ips, ips, counts, st.integers(0, 1 << 31)),
    st.just(relay.Accept()),
    st.builds(relay.Refused, st.text(max_size=relay.MAX_REASON)),
)
tcp_addrs = st.one_of(
    st.builds(lambda ip, p: f"/ip4/{ip}/tcp/{p}", st.ip_addresses(v=4), st.integers(1, 65535)),
    st.builds(lambda ip, p: f"/ip6/{ip}/tcp/{p}", st.ip_addresses(v=6), st.integers(1, 65535)),
).filter(lambda a: len(a) <= punch.MAX_ADDR)
punch_messages = st.one_of(
    st.builds(punch.Candidates, st.lists(tcp_addrs, max_size=punch.MAX_ADDRS).map(tuple)),
    st.just(punch.Sync()),
    st.builds(punch.Outcome, st.booleans()),
)


def _payload(encoded: bytes, cap: int) -> bytes:
    (payload,) = frame.FrameDecoder(cap).feed(encoded)
    return payload


@given(relay_messages)
def test_a_relay_message_decodes_to_itself(m: relay.Message) -> None:
    assert relay.decode(_payload(relay.encode(m), relay.CAP)) == m


@given(punch_messages)
def test_a_punch_message_decodes_to_itself(m: punch.Message) -> None:
    assert punch.decode(_payload(punch.encode(m), punch.CAP)) == m


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_the_formats_own_error(raw: bytes) -> None:
    with contextlib.suppress(relay.RelayError):
        relay.decode(raw)
    with contextlib.suppress(punch.PunchError):
        punch.decode(raw)


@given(
    st.lists(
        st.one_of(
            st.integers(-(1 << 63), (1 << 64) - 1), st.text(max_size=20), st.booleans(), st.none()
        ),
        max_size=7,
    )
)
def test_any_array_decodes_or_raises_the_formats_own_error(value: list[object]) -> None:
    raw = msgpack.packb(value)
    with contextlib.suppress(relay.RelayError):
        relay.decode(raw)
    with contextlib.suppress(punch.PunchError):
        punch.decode(raw)


@pytest.mark.parametrize(
    "value",
    [
        [],
        [9],
        ["0"],
        [0, "extra"],
        [1, -1, "1.2.3.4"],
        [1, 60, "not an ip"],
        [2, "not-a-peer-id!"],
        [2, "1" * 65],
        [3, "1.2.3.4", "", -5, 10],
        [4, PEERS[0], "", "", 1, True],
        [6, "x" * (relay.MAX_REASON + 1)],
        {"kind": 0},
    ],
)
def test_bad_relay_messages_are_refused(value: object) -> None:
    with pytest.raises(relay.RelayError):
        relay.decode(msgpack.packb(value))


@pytest.mark.parametrize(
    "value",
    [
        [0, ["/ip4/1.2.3.4/udp/1"]],
        [0, ["/ip4/1.2.3.4/tcp/0"]],
        [0, ["/ip4/::1/tcp/1"]],
        [0, ["/ip6/1.2.3.4/tcp/1"]],
        [0, ["/ip4/1.2.3.4/tcp/1/p2p/x"]],
        [0, ["/ip4/1.2.3.4/tcp/1"] * (punch.MAX_ADDRS + 1)],
        [0, "/ip4/1.2.3.4/tcp/1"],
        [2, 1],
        [1, 1],
    ],
)
def test_bad_punch_messages_are_refused(value: object) -> None:
    with pytest.raises(punch.PunchError):
        punch.decode(msgpack.packb(value))


def test_a_relayed_address_names_its_relay() -> None:
    import multiaddr

    got = circuit_relay(
        multiaddr.Multiaddr(f"/ip4/198.51.100.1/tcp/4001/p2p/{PEERS[0]}/p2p-circuit/p2p/{PEERS[1]}")
    )
    assert got is not None and got[0] == PEERS[0] and str(got[1]) == "/ip4/198.51.100.1/tcp/4001"
    assert circuit_relay(multiaddr.Multiaddr(f"/ip4/198.51.100.1/tcp/4001/p2p/{PEERS[0]}")) is None


# --- the service, over in-memory streams


class Pipe:
    """One end of an in-memory stream, as py-libp2p's streams behave: a reset end raises
    StreamReset at the other."""

    def __init__(self, end: trio.testing.MemoryStapledStream, remote: str) -> None:  # type: ignore[name-defined]
        self.end = end
        self.remote = remote
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self.end.receive_some(n)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise StreamReset(str(e)) from None

    async def write(self, data: bytes) -> None:
        try:
            await self.end.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise StreamReset(str(e)) from None

    async def close(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.end.send_eof()

    async def reset(self) -> None:
        self.was_reset = True
        await self.end.aclose()

    def get_remote_address(self) -> tuple[str, int]:
        return (self.remote, 4001)


def pipe(a_remote: str, b_remote: str) -> tuple[Pipe, Pipe]:
    a, b = trio.testing.memory_stream_pair()
    return Pipe(a, a_remote), Pipe(b, b_remote)


@dataclass
class FakeHost:
    """The relay's host: who is connected, and streams to them (the far end goes to
    `answer`, which plays the reserved peer)."""

    connected: list[str]
    answer: Callable[[Pipe], Awaitable[None]] | None = None
    nursery: trio.Nursery | None = None
    opened: list[Pipe] = field(default_factory=list)

    def get_connected_peers(self) -> list[ID]:
        return [ID.from_base58(p) for p in self.connected]

    async def new_stream(self, peer: ID, protocols: list[str]) -> Pipe:
        assert protocols == [relay.STOP] and self.answer is not None and self.nursery is not None
        ours, theirs = pipe("198.51.100.20", "198.51.100.1")
        self.opened.append(ours)
        self.nursery.start_soon(self.answer, theirs)
        return ours


async def _ask(
    service: RelayService, peer: str, message: relay.Message, nursery: trio.Nursery
) -> tuple[Pipe, Framed]:
    client, served = pipe("198.51.100.1", "198.51.100.10")
    nursery.start_soon(service.serve, served, peer)
    await client.write(relay.encode(message))
    return client, Framed(client, relay.CAP)  # type: ignore[arg-type]


def _service(host: FakeHost, **limits: int) -> RelayService:
    return RelayService(host, NodeConfig(relay="on", limits=PeerLimits(**limits)), lambda: False)  # type: ignore[arg-type]


async def test_a_full_relay_refuses_a_reservation_and_renews_the_ones_it_holds() -> None:
    host = FakeHost(connected=PEERS[:2])
    service = _service(host, relay_reservations=1)
    async with trio.open_nursery() as nursery:
        _, framed = await _ask(service, PEERS[0], relay.Reserve(), nursery)
        got = relay.decode(await framed.next())
        assert got == relay.Reserved(3600, "198.51.100.10")
        _, framed = await _ask(service, PEERS[1], relay.Reserve(), nursery)
        assert relay.decode(await framed.next()) == relay.Refused(
            "the relay is full: it holds 1 reservations"
        )
        _, framed = await _ask(service, PEERS[0], relay.Reserve(), nursery)
        assert isinstance(relay.decode(await framed.next()), relay.Reserved)
    assert service.report().reservations == 1 and service.report().refused == 1
    # A peer that disconnects holds no slot.
    host.connected = [PEERS[1]]
    assert service.report().reservations == 0


async def test_a_relay_that_does_not_serve_and_a_target_without_a_slot_are_refused() -> None:
    host = FakeHost(connected=PEERS[:2])
    off = RelayService(host, NodeConfig(relay="auto"), lambda: False)  # type: ignore[arg-type]
    service = _service(host)
    async with trio.open_nursery() as nursery:
        _, framed = await _ask(off, PEERS[0], relay.Reserve(), nursery)
        assert relay.decode(await framed.next()) == relay.Refused(
            "this node does not relay: peers have not found it public"
        )
        _, framed = await _ask(service, PEERS[0], relay.Connect(PEERS[1]), nursery)
        assert relay.decode(await framed.next()) == relay.Refused(
            f"{PEERS[1]} holds no reservation on this relay"
        )


async def test_a_circuit_carries_bytes_both_ways_and_ends_at_its_byte_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "node.daemon.relay")
    target_got = bytearray()
    target_done = trio.Event()

    async def target(stream: Pipe) -> None:
        framed = Framed(stream, relay.CAP)  # type: ignore[arg-type]
        incoming = relay.decode(await framed.next())
        assert incoming == relay.Incoming(PEERS[0], "198.51.100.10", "198.51.100.20", 10_000, 600)
        await stream.write(relay.encode(relay.Accept()) + b"hello from the target")
        target_got.extend(framed.rest())
        with contextlib.suppress(StreamReset):
            while data := await stream.read(65536):
                target_got.extend(data)
        target_done.set()

    host = FakeHost(connected=PEERS[:2], answer=target)
    service = _service(host, relay_circuit_bytes=10_000)
    async with trio.open_nursery() as nursery:
        host.nursery = nursery
        _, framed = await _ask(service, PEERS[1], relay.Reserve(), nursery)
        assert isinstance(relay.decode(await framed.next()), relay.Reserved)
        client, framed = await _ask(service, PEERS[0], relay.Connect(PEERS[1]), nursery)
        await client.write(b"sent early")  # before CONNECTED: the relay passes it on
        joined = relay.decode(await framed.next())
        assert joined == relay.Connected("198.51.100.10", "198.51.100.20", 10_000, 600)
        got = framed.rest()
        while len(got) < len(b"hello from the target"):
            got += await client.read(100)
        assert got == b"hello from the target"
        with contextlib.suppress(StreamReset):
            for _ in range(20):
                await client.write(b"x" * 1000)
        await target_done.wait()
    assert target_got.startswith(b"sent early" + b"x" * 1000)
    assert len(target_got) <= 10_000
    report = service.report()
    assert (report.circuits, report.circuits_total, report.ended_by_limit) == (0, 1, 1)
    assert report.bytes_relayed <= 10_000
    assert host.opened[0].was_reset
    assert "reached its 10,000-byte limit" in caplog.text


async def test_circuits_per_peer_are_limited() -> None:
    held = trio.Event()

    async def target(stream: Pipe) -> None:
        framed = Framed(stream, relay.CAP)  # type: ignore[arg-type]
        await framed.next()
        await stream.write(relay.encode(relay.Accept()))
        await held.wait()
        await stream.close()

    host = FakeHost(connected=PEERS[:2], answer=target)
    service = _service(host, relay_circuits_per_peer=1)
    async with trio.open_nursery() as nursery:
        host.nursery = nursery
        _, framed = await _ask(service, PEERS[1], relay.Reserve(), nursery)
        await framed.next()
        client, first = await _ask(service, PEERS[0], relay.Connect(PEERS[1]), nursery)
        assert isinstance(relay.decode(await first.next()), relay.Connected)
        _, second = await _ask(service, PEERS[0], relay.Connect(PEERS[1]), nursery)
        assert relay.decode(await second.next()) == relay.Refused("1 circuits per peer at most")
        assert service.report().circuits == 1
        held.set()  # both ends close: the circuit ends
        await client.close()
    assert service.report().circuits == 0


async def test_a_circuit_ends_at_its_time_limit_and_a_silent_target_is_given_up_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "node.daemon.relay")
    silent = False

    async def target(stream: Pipe) -> None:
        framed = Framed(stream, relay.CAP)  # type: ignore[arg-type]
        await framed.next()
        if silent:
            await trio.sleep_forever()
        await stream.write(relay.encode(relay.Accept()))
        with contextlib.suppress(StreamReset):
            while await stream.read(65536):
                pass

    host = FakeHost(connected=PEERS[:2], answer=target)
    service = _service(host, relay_circuit_seconds=30)
    async with trio.open_nursery() as nursery:
        host.nursery = nursery
        _, framed = await _ask(service, PEERS[1], relay.Reserve(), nursery)
        await framed.next()
        client, framed = await _ask(service, PEERS[0], relay.Connect(PEERS[1]), nursery)
        assert relay.decode(await framed.next()) == relay.Connected(
            "198.51.100.10", "198.51.100.20", 64 << 20, 30
        )
        started = trio.current_time()
        with contextlib.suppress(StreamReset):
            # Idle: nothing comes until the relay ends the circuit.
            assert await client.read(100) == b""
        assert trio.current_time() - started == pytest.approx(30, abs=0.1)
        silent = True
        _, framed = await _ask(service, PEERS[0], relay.Connect(PEERS[1]), nursery)
        refused = relay.decode(await framed.next())
        assert isinstance(refused, relay.Refused) and "did not take the circuit" in refused.reason
        nursery.cancel_scope.cancel()
    assert "reached its 30 s limit" in caplog.text
    report = service.report()
    assert (report.circuits, report.circuits_total, report.ended_by_limit) == (0, 1, 1)
