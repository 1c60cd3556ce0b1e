"""`/ferry/log/1`: a builder's claim log, read by anyone (trust.claimlog). One request and
one answer per stream, each a frame (p2p.frame) holding a kind-tagged msgpack array
(p2p.tagged):

    HEAD     [0, key: bin(32)]                          the log's newest signed head
    ENTRIES  [1, key: bin(32), start, count]            leaves start .. start+count-1
    SIGNED   [2, signed head: bin]                      answers HEAD
    LEAVES   [3, [leaf: bin, ...]]                      answers ENTRIES: from `start`, at
                                                        most `count`, at most MAX_BYTES
    NONE     [4, reason]                                no such log here, or a bad request
    CONSISTENT [5, key: bin(32), log: bin(16), old, new]  that the log of `old` leaves is
                                                        a prefix of that of `new`
    PROVED   [6, head: bin, head: bin, [hash: bin(32), ...]]
                                                        answers CONSISTENT: the builder's
                                                        signed heads of sizes `old` and
                                                        `new` now, and the RFC 9162
                                                        consistency proof between them
    INCLUDED [7, [claim: bin(32), ...]]                  these claims (by digest,
                                                        trust.revocation.claim_digest,
                                                        at most MAX_INCLUDED) with their
                                                        places in their builders' logs
    LOGGED   [8, [logged claim: bin, ...]]              answers INCLUDED: those it holds
                                                        (trust.logged), at most
                                                        MAX_LOGGED_FORMS a claim

A node serves the logs of the keys it signs with. `ferry trust audit` reads a whole log
this way and checks it against the heads the node has seen. Any node answers INCLUDED
from the logged claims it checked and kept (node.daemon.logbook), a builder from its
log; a node whose policy requires logs asks it of the peers that hold a path's claims.
A node that sees a head of
another size than the newest it holds asks CONSISTENT of the builder. The builder signs
the heads it answers with: if its log is not the one a head it signed before describes,
its answer and that head are two roots for one size (a FORK anyone can check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from p2p import tagged

PROTOCOL = "/ferry/log/1"
MAX_COUNT = 256
MAX_PROOF = 128  # hashes in a consistency proof: at most 2 log2(size)
MAX_LOGGED_FORMS = 8  # of one claim, in one LOGGED: a key keeps a log per machine
MAX_INCLUDED = 64  # claims asked about in one INCLUDED
MAX_LOGGED_ANSWER = MAX_INCLUDED * MAX_LOGGED_FORMS
MAX_BYTES = 1 << 20  # leaves in one LEAVES answer, at most (one leaf may be larger)
CAP = 8 << 20  # a frame: a claim is at most 4 MiB


class LogWireError(ValueError):
    """Bytes that are not a log message."""


def _key(v: object) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise LogWireError("a key (or a claim's digest) is 32 bytes")
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


@dataclass(frozen=True, slots=True)
class Consistent:
    KIND: ClassVar[int] = 5
    key: bytes
    log: bytes
    old: int
    new: int

    def fields(self) -> list[object]:
        return [self.key, self.log, self.old, self.new]

    @staticmethod
    def parse(rest: list[object]) -> Consistent:
        log = rest[1]
        if not isinstance(log, bytes) or len(log) != 16:
            raise LogWireError("a log id is 16 bytes")
        old, new = _uint(rest[2], "old"), _uint(rest[3], "new")
        if not 0 < old < new:
            raise LogWireError("a consistency request is from a smaller size to a larger one")
        return Consistent(_key(rest[0]), log, old, new)


@dataclass(frozen=True, slots=True)
class Proved:
    KIND: ClassVar[int] = 6
    old: bytes  # trust.treehead.SignedTreeHead, decoded by the asker
    new: bytes
    proof: tuple[bytes, ...]

    def fields(self) -> list[object]:
        return [self.old, self.new, list(self.proof)]

    @staticmethod
    def parse(rest: list[object]) -> Proved:
        old, new, proof = rest
        if not isinstance(old, bytes) or not isinstance(new, bytes):
            raise LogWireError("heads are bytes")
        if (
            not isinstance(proof, list)
            or len(proof) > MAX_PROOF
            or not all(isinstance(h, bytes) and len(h) == 32 for h in proof)
        ):
            raise LogWireError(f"a consistency proof is at most {MAX_PROOF} 32-byte hashes")
        return Proved(old, new, tuple(proof))


@dataclass(frozen=True, slots=True)
class Included:
    KIND: ClassVar[int] = 7
    claims: tuple[bytes, ...]

    def fields(self) -> list[object]:
        return [list(self.claims)]

    @staticmethod
    def parse(rest: list[object]) -> Included:
        v = rest[0]
        if not isinstance(v, list) or not 0 < len(v) <= MAX_INCLUDED:
            raise LogWireError(f"INCLUDED asks about 1 to {MAX_INCLUDED} claims")
        return Included(tuple(_key(x) for x in v))


@dataclass(frozen=True, slots=True)
class Logged:
    KIND: ClassVar[int] = 8
    entries: tuple[bytes, ...]  # trust.logged.LoggedClaim, decoded and checked by the asker

    def fields(self) -> list[object]:
        return [list(self.entries)]

    @staticmethod
    def parse(rest: list[object]) -> Logged:
        v = rest[0]
        if (
            not isinstance(v, list)
            or len(v) > MAX_LOGGED_ANSWER
            or not all(isinstance(x, bytes) for x in v)
        ):
            raise LogWireError(
                f"logged claims are a list of at most {MAX_LOGGED_ANSWER} byte strings"
            )
        return Logged(tuple(v))


Message = Head | Entries | Signed | Leaves | Nothing | Consistent | Proved | Included | Logged
_KINDS: dict[int, tuple[type[Message], int]] = {
    Head.KIND: (Head, 1),
    Entries.KIND: (Entries, 3),
    Signed.KIND: (Signed, 1),
    Leaves.KIND: (Leaves, 1),
    Nothing.KIND: (Nothing, 1),
    Consistent.KIND: (Consistent, 4),
    Proved.KIND: (Proved, 3),
    Included.KIND: (Included, 1),
    Logged.KIND: (Logged, 1),
}


def encode(message: Message) -> bytes:
    return tagged.encode(message, CAP)


def decode(payload: bytes) -> Message:
    message: Message = tagged.decode(
        payload, _KINDS, LogWireError, max_items=MAX_LOGGED_ANSWER, what="log"
    )
    return message
