"""`/ferry/claims/1` and `/2`: asking a peer for build claims, and pushing claims to it
(sans-io).

One request per stream, each message a frame holding a msgpack array:

    [0, path_hash: str]              GET    "the claims you hold for this store path hash"
    [1, [signed_claim: bin, ...]]    CLAIMS the answer (at most MAX_CLAIMS)
    [2, [signed_claim: bin, ...]]    PUSH   "here are claims" (new ones, from a builder or gossip)
    [3, accepted: uint]              ACK    how many of the pushed claims were valid and new
    [4, [path_hash: str, ...]]       GETS   GET for up to MAX_GETS hashes at once (`/2` only),
                                            answered by one CLAIMS per hash, in the order asked

`/2` is `/1` plus GETS: a closure's thousands of paths are asked a few hundred to a
stream. A client opens `/2` for GETS, so a node that only speaks `/1` refuses the
protocol rather than taking GETS for a violation.

Claims travel as the bytes their builder signed; the receiver decodes and verifies each
one and drops what does not verify. Signatures make them safe to pass on: a node serves
every valid claim it learned, so one builder's peer still hears of the others.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import msgpack

from p2p.frame import FrameDecoder, FrameError
from p2p.frame import encode as frame
from trust.claim import MAX_CLAIM

PROTOCOL = "/ferry/claims/1"
PROTOCOL_GETS = "/ferry/claims/2"
MAX_CLAIMS = 256  # per answer or push; a path has a handful of builders
MAX_GETS = 256  # hashes per GETS
CAP = 4 << 20
_HASH = re.compile(r"[0-9abcdfghijklmnpqrsvwxyz]{32}")


class ClaimsError(FrameError):
    """The peer broke `/ferry/claims/1`."""


class Kind(enum.IntEnum):
    GET = 0
    CLAIMS = 1
    PUSH = 2
    ACK = 3
    GETS = 4


@dataclass(frozen=True, slots=True)
class Get:
    path_hash: str

    def __post_init__(self) -> None:
        if not (isinstance(self.path_hash, str) and _HASH.fullmatch(self.path_hash)):
            raise ClaimsError("GET needs a 32-character nix32 store path hash")


@dataclass(frozen=True, slots=True)
class Gets:
    path_hashes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.path_hashes) <= MAX_GETS:
            raise ClaimsError(f"GETS asks for 1 to {MAX_GETS} hashes")
        for h in self.path_hashes:
            if not (isinstance(h, str) and _HASH.fullmatch(h)):
                raise ClaimsError("GETS needs 32-character nix32 store path hashes")


@dataclass(frozen=True, slots=True)
class Claims:
    claims: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Push:
    claims: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    accepted: int


Message = Get | Claims | Push | Ack | Gets


def encode(msg: Message) -> bytes:
    if isinstance(msg, Get):
        body: list[object] = [int(Kind.GET), msg.path_hash]
    elif isinstance(msg, Gets):
        body = [int(Kind.GETS), list(msg.path_hashes)]
    elif isinstance(msg, Claims | Push):
        if len(msg.claims) > MAX_CLAIMS:
            raise ClaimsError(f"at most {MAX_CLAIMS} claims fit one message")
        body = [int(Kind.CLAIMS if isinstance(msg, Claims) else Kind.PUSH), list(msg.claims)]
    else:
        body = [int(Kind.ACK), msg.accepted]
    return frame(msgpack.packb(body, use_bin_type=True), CAP)


def decode(payload: bytes) -> Message:
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            max_bin_len=MAX_CLAIM,
            max_str_len=64,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=max(MAX_CLAIMS, MAX_GETS),
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises many unrelated types for bad input
        raise ClaimsError(f"message is not valid msgpack: {e}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and type(obj[0]) is int):
        raise ClaimsError("message is not [kind, body]")
    kind, body = obj
    if kind == Kind.GET:
        return Get(body)
    if kind == Kind.GETS:
        if not isinstance(body, list):
            raise ClaimsError("GETS needs a list of hashes")
        return Gets(tuple(body))
    if kind in (Kind.CLAIMS, Kind.PUSH):
        if not (isinstance(body, list) and all(isinstance(c, bytes) for c in body)):
            raise ClaimsError("claims must be a list of byte strings")
        return (Claims if kind == Kind.CLAIMS else Push)(tuple(body))
    if kind == Kind.ACK:
        if type(body) is not int or body < 0:
            raise ClaimsError("ACK needs a count")
        return Ack(body)
    raise ClaimsError(f"unknown message kind {kind}")


class Reader:
    """Collects the one message a claims stream carries."""

    def __init__(self) -> None:
        self._frames = FrameDecoder(CAP)
        self.message: Message | None = None

    def receive_data(self, data: bytes) -> Message | None:
        for payload in self._frames.feed(data):
            if self.message is not None:
                raise ClaimsError("more than one message on a claims stream")
            self.message = decode(payload)
        return self.message


class Answers:
    """Collects the CLAIMS answers to a GETS of `count` hashes, in the order asked."""

    def __init__(self, count: int) -> None:
        self._frames = FrameDecoder(CAP)
        self.count = count
        self.answers: list[tuple[bytes, ...]] = []

    def receive_data(self, data: bytes) -> bool:
        """True once every answer is in."""
        for payload in self._frames.feed(data):
            msg = decode(payload)
            if not isinstance(msg, Claims):
                raise ClaimsError("answered GETS with something other than CLAIMS")
            if len(self.answers) == self.count:
                raise ClaimsError(f"more than the {self.count} answers GETS asked for")
            self.answers.append(msg.claims)
        return len(self.answers) == self.count
