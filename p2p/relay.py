"""Relayed connections between nodes that cannot dial each other: ferry's circuit relay.

A node behind NAT can dial out but nobody can dial it. It keeps a *reservation* on a
public node (a relay); a peer that wants to reach it asks the relay to *connect* them,
and the relay joins the two streams and copies bytes between them, counting them against
its limits. What the two ends say over the joined streams is theirs: first a hole punch
(p2p.punch), then, if the punch failed, a whole libp2p connection (noise, yamux) inside
the circuit, so the relay sees only ciphertext.

py-libp2p 0.8.1 ships circuit relay v2, but its transport picks relays by itself, dials
whatever the peerstore holds and wraps the result in a performance tracker; ferry needs a
relay with hard limits it can count, and a punch attempted before anything else is sent
through the relay. The messages are ferry's own, one frame each (p2p.frame), msgpack
arrays whose first item says which:

    /ferry/relay/hop/1.0.0, a client to the relay, one request per stream:
    RESERVE    [0]                                   keep a slot for me
    RESERVED   [1, ttl seconds, observed ip]          held that long; you come from that IP
    CONNECT    [2, peer id]                          join me to that peer
    CONNECTED  [3, observed ip, peer's observed ip, max bytes, max seconds]
                                                     joined: the stream is now the circuit
    REFUSED    [6, reason]                           either request, refused; the stream ends

    /ferry/relay/stop/1.0.0, the relay to the reserved peer, one circuit per stream:
    INCOMING   [4, peer id, its observed ip, your observed ip, max bytes, max seconds]
    ACCEPT     [5]                                   the stream is now the circuit
    REFUSED    [6, reason]

An observed IP is "" when the relay saw none. Every frame is at most CAP bytes.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import ClassVar

from p2p import tagged

HOP = "/ferry/relay/hop/1.0.0"
STOP = "/ferry/relay/stop/1.0.0"
CAP = 1024
MAX_REASON = 200
# A libp2p peer id in base58 (an identity-hashed Ed25519 key is 52 characters).
_PEER_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,64}")


class RelayError(ValueError):
    """Bytes that are not a relay message, or not the one expected here."""


def _peer(value: object) -> str:
    if not isinstance(value, str) or not _PEER_ID.fullmatch(value):
        raise RelayError("a peer id must be base58, 32 to 64 characters")
    return value


def _ip(value: object) -> str:
    if not isinstance(value, str):
        raise RelayError("an observed IP must be a string")
    if value == "":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise RelayError(f"{value[:64]!r} is not an IP address") from None


def _count(value: object, name: str, top: int) -> int:
    if type(value) is not int or not 0 <= value <= top:
        raise RelayError(f"{name} must be a whole number from 0 to {top}")
    return value


@dataclass(frozen=True, slots=True)
class Reserve:
    KIND: ClassVar[int] = 0

    def fields(self) -> list[object]:
        return []

    @staticmethod
    def parse(rest: list[object]) -> Reserve:
        return Reserve()


@dataclass(frozen=True, slots=True)
class Reserved:
    KIND: ClassVar[int] = 1
    ttl: int  # seconds the slot is held; the client renews it well before
    observed: str

    def fields(self) -> list[object]:
        return [self.ttl, self.observed]

    @staticmethod
    def parse(rest: list[object]) -> Reserved:
        return Reserved(_count(rest[0], "ttl", 1 << 31), _ip(rest[1]))


@dataclass(frozen=True, slots=True)
class Connect:
    KIND: ClassVar[int] = 2
    peer: str

    def fields(self) -> list[object]:
        return [self.peer]

    @staticmethod
    def parse(rest: list[object]) -> Connect:
        return Connect(_peer(rest[0]))


@dataclass(frozen=True, slots=True)
class Connected:
    KIND: ClassVar[int] = 3
    observed: str  # the asking client's IP, as the relay saw it
    peer_observed: str  # the peer's IP, as the relay saw it
    max_bytes: int  # the circuit carries this many bytes, both ways together, then ends
    max_seconds: int

    def fields(self) -> list[object]:
        return [self.observed, self.peer_observed, self.max_bytes, self.max_seconds]

    @staticmethod
    def parse(rest: list[object]) -> Connected:
        return Connected(
            _ip(rest[0]),
            _ip(rest[1]),
            _count(rest[2], "max bytes", 1 << 62),
            _count(rest[3], "max seconds", 1 << 31),
        )


@dataclass(frozen=True, slots=True)
class Incoming:
    KIND: ClassVar[int] = 4
    peer: str  # who asked to be joined to you
    peer_observed: str
    observed: str  # your IP, as the relay saw it
    max_bytes: int
    max_seconds: int

    def fields(self) -> list[object]:
        return [self.peer, self.peer_observed, self.observed, self.max_bytes, self.max_seconds]

    @staticmethod
    def parse(rest: list[object]) -> Incoming:
        return Incoming(
            _peer(rest[0]),
            _ip(rest[1]),
            _ip(rest[2]),
            _count(rest[3], "max bytes", 1 << 62),
            _count(rest[4], "max seconds", 1 << 31),
        )


@dataclass(frozen=True, slots=True)
class Accept:
    KIND: ClassVar[int] = 5

    def fields(self) -> list[object]:
        return []

    @staticmethod
    def parse(rest: list[object]) -> Accept:
        return Accept()


@dataclass(frozen=True, slots=True)
class Refused:
    KIND: ClassVar[int] = 6
    reason: str

    def fields(self) -> list[object]:
        return [self.reason[:MAX_REASON]]

    @staticmethod
    def parse(rest: list[object]) -> Refused:
        if not isinstance(rest[0], str) or len(rest[0]) > MAX_REASON:
            raise RelayError(f"a reason must be text of at most {MAX_REASON} characters")
        return Refused(rest[0])


Message = Reserve | Reserved | Connect | Connected | Incoming | Accept | Refused
_KINDS: dict[int, tuple[type[Message], int]] = {
    Reserve.KIND: (Reserve, 0),
    Reserved.KIND: (Reserved, 2),
    Connect.KIND: (Connect, 1),
    Connected.KIND: (Connected, 4),
    Incoming.KIND: (Incoming, 5),
    Accept.KIND: (Accept, 0),
    Refused.KIND: (Refused, 1),
}


def encode(message: Message) -> bytes:
    return tagged.encode(message, CAP)


def decode(payload: bytes) -> Message:
    message: Message = tagged.decode(payload, _KINDS, RelayError, max_items=8, what="relay")
    return message
