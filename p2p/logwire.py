"""`/ferry/log/1`: a builder's claim log, read by anyone (trust.claimlog). One request and
one answer per stream, each a frame (p2p.frame) holding a kind-tagged msgpack array
(p2p.tagged):

    HEAD     [0, key: bin(32)]                          the log's newest signed head
    ENTRIES  [1, key: bin(32), start, count]            leaves start .. start+count-1
    SIGNED   [2, signed head: bin]                      answers HEAD
    LEAVES   [3, [leaf: bin, ...]]                      answers ENTRIES: from `start`, at
                                                        most `count`, at most MAX_BYTES
    NONE     [4, reason]                                no such log here, or a bad request

A node serves the logs of the keys it signs with. `ferry trust audit` reads a whole log
this way and checks it against the heads the node has seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from p2p import tagged

PROTOCOL = "/ferry/log/1"
MAX_COUNT = 256
MAX_BYTES = 1 << 20  # leaves in one LEAVES answer, at most (one leaf may be larger)
CAP = 8 << 20  # a frame: a claim is at most 4 MiB


class LogWireError(ValueError):
    """Bytes that are not a log message."""


def _key(v: object) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise LogWireError("a key is 32 bytes")
    return v


def _uint(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v < 1 << 62:
        raise LogWireError(f"{what} must be a whole number")
    return v


@dataclass(frozen=True, slots=True)
class Head:
    KIND: ClassVar[int] = 0
    key: bytes

    def fields(self) -> list[object]:
        return [self.key]

    @staticmethod
    def parse(rest: list[object]) -> Head:
        return Head(_key(rest[0]))


@dataclass(frozen=True, slots=True)
class Entries:
    KIND: ClassVar[int] = 1
    key: bytes
    start: int
    count: int

    def fields(self) -> list[object]:
        return [self.key, self.start, self.count]

    @staticmethod
    def parse(rest: list[object]) -> Entries:
        count = _uint(rest[2], "count")
        if not 0 < count <= MAX_COUNT:
            raise LogWireError(f"count must be from 1 to {MAX_COUNT}")
        return Entries(_key(rest[0]), _uint(rest[1], "start"), count)


@dataclass(frozen=True, slots=True)
class Signed:
    KIND: ClassVar[int] = 2
    head: bytes  # trust.treehead.SignedTreeHead, decoded by the asker

    def fields(self) -> list[object]:
        return [self.head]

    @staticmethod
    def parse(rest: list[object]) -> Signed:
        if not isinstance(rest[0], bytes):
            raise LogWireError("a head is bytes")
        return Signed(rest[0])


@dataclass(frozen=True, slots=True)
class Leaves:
    KIND: ClassVar[int] = 3
    leaves: tuple[bytes, ...]

    def fields(self) -> list[object]:
        return [list(self.leaves)]

    @staticmethod
    def parse(rest: list[object]) -> Leaves:
        v = rest[0]
        if (
            not isinstance(v, list)
            or len(v) > MAX_COUNT
            or not all(isinstance(x, bytes) for x in v)
        ):
            raise LogWireError(f"leaves are a list of at most {MAX_COUNT} byte strings")
        return Leaves(tuple(v))


@dataclass(frozen=True, slots=True)
class Nothing:
    KIND: ClassVar[int] = 4
    reason: str

    def fields(self) -> list[object]:
        return [self.reason[:200]]

    @staticmethod
    def parse(rest: list[object]) -> Nothing:
        if not isinstance(rest[0], str) or len(rest[0]) > 200:
            raise LogWireError("a reason is text of at most 200 characters")
        return Nothing(rest[0])


Message = Head | Entries | Signed | Leaves | Nothing
_KINDS: dict[int, tuple[type[Message], int]] = {
    Head.KIND: (Head, 1),
    Entries.KIND: (Entries, 3),
    Signed.KIND: (Signed, 1),
    Leaves.KIND: (Leaves, 1),
    Nothing.KIND: (Nothing, 1),
}


def encode(message: Message) -> bytes:
    return tagged.encode(message, CAP)


def decode(payload: bytes) -> Message:
    message: Message = tagged.decode(payload, _KINDS, LogWireError, max_items=MAX_COUNT, what="log")
    return message
