"""`/ferry/claims/1`: asking a peer for build claims, and pushing claims to it (sans-io).

One request and one response per stream, each a frame holding a msgpack array:

    [0, path_hash: str]              GET    "the claims you hold for this store path hash"
    [1, [signed_claim: bin, ...]]    CLAIMS the answer (at most MAX_CLAIMS)
    [2, [signed_claim: bin, ...]]    PUSH   "here are claims" (new ones, from a builder or gossip)
    [3, accepted: uint]              ACK    how many of the pushed claims were valid and new

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
MAX_CLAIMS = 256  # per answer or push; a path has a handful of builders
CAP = 4 << 20
_HASH = re.compile(r"[0-9abcdfghijklmnpqrsvwxyz]{32}")


class ClaimsError(FrameError):
    """The peer broke `/ferry/claims/1`."""


class Kind(enum.IntEnum):
    GET = 0
    CLAIMS = 1
    PUSH = 2
    ACK = 3


@dataclass(frozen=True, slots=True)
class Get:
    path_hash: str

    def __post_init__(self) -> None:
        if not (isinstance(self.path_hash, str) and _HASH.fullmatch(self.path_hash)):
            raise ClaimsError("GET needs a 32-character nix32 store path hash")


@dataclass(frozen=True, slots=True)
class Claims:
    claims: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Push:
    claims: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    accepted: int


Message = Get | Claims | Push | Ack


def encode(msg: Message) -> bytes:
    if isinstance(msg, Get):
        body: list[object] = [int(Kind.GET), msg.path_hash]
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
            max_array_len=MAX_CLAIMS,
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises many unrelated types for bad input
        raise ClaimsError(f"message is not valid msgpack: {e}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and type(obj[0]) is int):
        raise ClaimsError("message is not [kind, body]")
    kind, body = obj
    if kind == Kind.GET:
        return Get(body)
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
