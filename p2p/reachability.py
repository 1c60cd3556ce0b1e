"""Whether a node can be dialed from outside: ferry's dial-back protocol.

py-libp2p 0.8.1's AutoNAT cannot tell. Its server dials back with `host.connect`, which
returns at once when a connection to that peer exists, and the request itself came on
one: every node that asks is told it is public (or, when it advertises only private
addresses, refused). Here the server dials back on a fresh TCP connection of its own,
outside the swarm. It dials only the requester's observed IP (never an address the
requester names, so nobody can aim it at a third party) and only the ports the requester
listens on, at most MAX_PORTS. A port counts as reachable when a libp2p listener answers
there: it echoes multistream-select's header.

    /ferry/reachability/1.0.0, one request and one answer, each a frame (p2p.frame):
    ASK      msgpack [port, ...]                   1..MAX_PORTS TCP ports, each 1..65535
    VERDICT  msgpack [observed ip, [port, ...]]    the ports that answered from outside
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import msgpack
import trio

from p2p import frame

PROTOCOL = "/ferry/reachability/1.0.0"
MAX_PORTS = 4
CAP = 512  # bytes of a frame's payload, either way
DIAL_TIMEOUT = 3.0
# multistream-select's header, varint length first: a libp2p listener answers a dialer's
# header with its own.
MULTISTREAM = b"\x13/multistream/1.0.0\n"


class ReachabilityError(ValueError):
    """Bytes that are not a reachability message."""


def _unpack(payload: bytes) -> object:
    try:
        return msgpack.unpackb(payload, strict_map_key=True, max_array_len=MAX_PORTS + 2)
    except Exception as e:  # noqa: BLE001 - msgpack raises several kinds
        raise ReachabilityError(f"not msgpack: {e}") from None


def _ports(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_PORTS:
        raise ReachabilityError(f"ports must be a list of at most {MAX_PORTS}")
    if not all(type(p) is int and 0 < p < 65536 for p in value):
        raise ReachabilityError("a port must be a number from 1 to 65535")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Ask:
    ports: tuple[int, ...]

    def encode(self) -> bytes:
        return frame.encode(msgpack.packb(list(_ports(list(self.ports)))), CAP)

    @staticmethod
    def decode(payload: bytes) -> Ask:
        ports = _ports(_unpack(payload))
        if not ports:
            raise ReachabilityError("an ASK names no port")
        return Ask(ports)


@dataclass(frozen=True, slots=True)
class Verdict:
    observed: str  # the requester's IP as the server saw it
    reachable: tuple[int, ...]  # its ports a libp2p listener answered on, from outside

    def encode(self) -> bytes:
        return frame.encode(msgpack.packb([self.observed, list(self.reachable)]), CAP)

    @staticmethod
    def decode(payload: bytes) -> Verdict:
        value = _unpack(payload)
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
            raise ReachabilityError("a VERDICT is [observed ip, [port, ...]]")
        try:
            ip = str(ipaddress.ip_address(value[0]))
        except ValueError:
            raise ReachabilityError(f"{value[0][:64]!r} is not an IP address") from None
        return Verdict(ip, _ports(value[1]))


async def answers_as_libp2p(ip: str, port: int) -> bool:
    """A libp2p listener answers at ip:port, on a connection of our own."""
    with trio.move_on_after(DIAL_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(ip, port)
        except OSError:
            return False
        async with stream:
            try:
                await stream.send_all(MULTISTREAM)
                got = b""
                while len(got) < len(MULTISTREAM):
                    data = await stream.receive_some(len(MULTISTREAM) - len(got))
                    if not data:
                        return False
                    got += data
            except (OSError, trio.BrokenResourceError):
                return False
            return got == MULTISTREAM
    return False


async def check(observed: str, ask: Ask) -> Verdict:
    """Dial `observed` back on each asked port at once."""
    reachable: list[int] = []

    async def one(port: int) -> None:
        if await answers_as_libp2p(observed, port):
            reachable.append(port)

    async with trio.open_nursery() as nursery:
        for port in dict.fromkeys(ask.ports):
            nursery.start_soon(one, port)
    return Verdict(observed, tuple(sorted(reachable)))
