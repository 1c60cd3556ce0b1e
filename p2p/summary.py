"""`/ferry/summary/1`: which store paths a peer can answer claims for, kept current (sans-io).

A node opens one stream to each peer it connects to and only reads; the peer writes,
for as long as the connection lasts, frames holding a msgpack array:

    [0, keys: bin]    ADD     these paths now have claims here
    [1, keys: bin]    REMOVE  these no longer do
    [2]               SYNCED  everything held when the stream opened has been listed

`keys` is a run of 8-byte keys, one per store path hash (`key()`), at most MAX_KEYS a
frame. With every connected peer's summary in memory, a node answers "nobody near me
has this path" without a round trip: Nix asks the gateway for every path of every
build, and most are misses. Eight bytes make a false "maybe" one in 2**64 per path,
and, unlike a Bloom filter, allow removal.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import blake3
import msgpack

from p2p.frame import FrameDecoder, FrameError
from p2p.frame import encode as frame

PROTOCOL = "/ferry/summary/1"
KEY = 8
MAX_KEYS = 1 << 16  # 512 KiB of keys a frame
CAP = KEY * MAX_KEYS + 64


def key(path_hash: str) -> bytes:
    """The summary key of a store path hash (the 32 nix32 characters)."""
    return blake3.blake3(path_hash.encode()).digest(KEY)


class SummaryError(FrameError):
    """The peer broke `/ferry/summary/1`."""


class Kind(enum.IntEnum):
    ADD = 0
    REMOVE = 1
    SYNCED = 2


@dataclass(frozen=True, slots=True)
class Add:
    keys: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class Remove:
    keys: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class Synced:
    pass


Message = Add | Remove | Synced


def encode(msg: Message) -> bytes:
    if isinstance(msg, Synced):
        body: list[object] = [int(Kind.SYNCED)]
    else:
        if len(msg.keys) > MAX_KEYS:
            raise SummaryError(f"at most {MAX_KEYS} keys fit one message")
        kind = Kind.ADD if isinstance(msg, Add) else Kind.REMOVE
        body = [int(kind), b"".join(sorted(msg.keys))]
    return frame(msgpack.packb(body, use_bin_type=True), CAP)


def encode_all(msg_type: type[Add] | type[Remove], keys: Iterable[bytes]) -> bytes:
    """Frames of `msg_type` carrying `keys` (split at MAX_KEYS), concatenated."""
    ordered = sorted(keys)
    return b"".join(
        encode(msg_type(frozenset(ordered[i : i + MAX_KEYS])))
        for i in range(0, len(ordered), MAX_KEYS)
    )


def decode(payload: bytes) -> Message:
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            max_bin_len=KEY * MAX_KEYS,
            max_str_len=0,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=2,
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises many unrelated types for bad input
        raise SummaryError(f"message is not valid msgpack: {e}") from None
    if not (isinstance(obj, list) and obj and type(obj[0]) is int):
        raise SummaryError("message is not [kind, ...]")
    kind = obj[0]
    if kind == Kind.SYNCED and len(obj) == 1:
        return Synced()
    if kind in (Kind.ADD, Kind.REMOVE) and len(obj) == 2:
        blob = obj[1]
        if not isinstance(blob, bytes) or len(blob) % KEY:
            raise SummaryError("keys must be a run of 8-byte keys")
        keys = frozenset(blob[i : i + KEY] for i in range(0, len(blob), KEY))
        return Add(keys) if kind == Kind.ADD else Remove(keys)
    raise SummaryError(f"unknown message kind {kind} (or wrong length)")


class PeerSummary:
    """What one peer has told us: fed the stream's bytes, it keeps the peer's keys."""

    def __init__(self) -> None:
        self._frames = FrameDecoder(CAP)
        self.keys: set[bytes] = set()
        self.synced = False

    def receive_data(self, data: bytes) -> list[Message]:
        out = []
        for payload in self._frames.feed(data):
            msg = decode(payload)
            if isinstance(msg, Add):
                self.keys |= msg.keys
            elif isinstance(msg, Remove):
                self.keys -= msg.keys
            elif self.synced:
                raise SummaryError("SYNCED sent twice")
            else:
                self.synced = True
            out.append(msg)
        return out

    def __contains__(self, path_hash: str) -> bool:
        return key(path_hash) in self.keys
