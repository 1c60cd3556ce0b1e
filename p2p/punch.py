"""The hole punch two nodes behind NAT try over a fresh relay circuit (p2p.relay), before
anything else crosses it: the shape of libp2p's DCUtR, on TCP.

Each side names where it expects to be dialable: the IP the relay saw it at, with the
port it listens on (a router that keeps a connection's source port maps the listen port
to the same public port, which is what most home routers do). The dialer times the
exchange, says SYNC, waits half a round trip and dials; the other side dials on SYNC.
Both dial *from* their listen port, so each router sees the other's SYN as the answer to
one it let out, and the two SYNs make one TCP connection (a simultaneous open). The
dialer then says whether it got a direct connection; if not, both turn the circuit itself
into their connection.

    CANDIDATES  [0, [multiaddr, ...]]   at most MAX_ADDRS /ip4|/ip6 .../tcp/PORT addresses
    SYNC        [1]                      the dialer: dial now
    OUTCOME     [2, direct]              the dialer: true, the punched connection is up
                                         (the circuit ends); false, use the circuit

The circuit is not yet encrypted: a relay that alters these can only make the punch fail,
since the punched connection's noise handshake checks the peer's identity.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from p2p import tagged

CAP = 1024
MAX_ADDRS = 4
MAX_ADDR = 80


class PunchError(ValueError):
    """Bytes that are not a punch message."""


def tcp_address(text: object) -> tuple[str, int]:
    """The (ip, port) of an /ip4/…/tcp/… or /ip6/…/tcp/… address, or PunchError."""
    if not isinstance(text, str) or len(text) > MAX_ADDR:
        raise PunchError(f"an address must be text of at most {MAX_ADDR} characters")
    parts = text.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        raise PunchError(f"{text!r} is not /ip4/IP/tcp/PORT or /ip6/IP/tcp/PORT")
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        raise PunchError(f"{parts[2]!r} is not an IP address") from None
    if (ip.version == 4) != (parts[1] == "ip4"):
        raise PunchError(f"{text!r} names an IP of the other family")
    if not parts[4].isdigit() or not 0 < int(parts[4]) < 65536:
        raise PunchError(f"{parts[4]!r} is not a port from 1 to 65535")
    return str(ip), int(parts[4])


@dataclass(frozen=True, slots=True)
class Candidates:
    KIND: ClassVar[int] = 0
    addrs: tuple[str, ...]

    def fields(self) -> list[object]:
        return [list(self.addrs)]

    @staticmethod
    def parse(rest: list[object]) -> Candidates:
        addrs = rest[0]
        if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
            raise PunchError(f"candidates are a list of at most {MAX_ADDRS} addresses")
        for a in addrs:
            tcp_address(a)
        return Candidates(tuple(str(a) for a in addrs))


@dataclass(frozen=True, slots=True)
class Sync:
    KIND: ClassVar[int] = 1

    def fields(self) -> list[object]:
        return []

    @staticmethod
    def parse(rest: list[object]) -> Sync:
        return Sync()


@dataclass(frozen=True, slots=True)
class Outcome:
    KIND: ClassVar[int] = 2
    direct: bool

    def fields(self) -> list[object]:
        return [self.direct]

    @staticmethod
    def parse(rest: list[object]) -> Outcome:
        if not isinstance(rest[0], bool):
            raise PunchError("an OUTCOME says true or false")
        return Outcome(rest[0])


Message = Candidates | Sync | Outcome
_KINDS: dict[int, tuple[type[Message], int]] = {
    Candidates.KIND: (Candidates, 1),
    Sync.KIND: (Sync, 0),
    Outcome.KIND: (Outcome, 1),
}


def encode(message: Message) -> bytes:
    return tagged.encode(message, CAP)


def decode(payload: bytes) -> Message:
    message: Message = tagged.decode(
        payload, _KINDS, PunchError, max_items=MAX_ADDRS + 2, what="punch"
    )
    return message
