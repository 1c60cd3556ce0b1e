"""Signed tree heads: a builder's word on its claim log's size and root at a time.

The head body is canonical msgpack, one array in a fixed order:

    ["ferry-tree-head-1", builder_name: str, builder_key: bin(32), log: bin(16),
     size: uint, root: bin(32, RFC 9162 tree hash), time: uint (seconds since the epoch)]

`log` names one log of the key: a key used on two machines keeps two logs, each checked
on its own (trust.equivocation only compares heads of one log).

signed with ed25519 over `b"ferry-tree-head-1\\0" + body`: a domain of its own, so a
head's signature can never pass for a claim's (`b"ferry-claim-1\\0"`) or a Nix
fingerprint's. A signed head, as stored and sent, is `[body: bin, signature: bin(64)]`.
Decoding takes canonical bytes only and bounds every field, as the claim decoder does.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field

import msgpack

from trust import bounded
from trust.key import PUBLIC_SIZE, SIGNATURE_SIZE, KeyFormatError, PublicKey, SecretKey
from trust.merkle import HASH_SIZE

FORMAT = "ferry-tree-head-1"
DOMAIN = FORMAT.encode() + b"\0"
MAX_HEAD = 1024
MAX_INT = (1 << 63) - 1
LOG_ID_SIZE = 16


class TreeHeadError(ValueError):
    """Bytes that are not a valid, canonical signed tree head; the message says why."""


def _unpack(data: bytes, what: str) -> object:
    return bounded.unpack(data, TreeHeadError, what, limit=MAX_HEAD, max_array=8)


def _uint(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:
        raise TreeHeadError(f"tree head {what} must be a whole number from 0 to {MAX_INT}")
    return v


@dataclass(frozen=True, slots=True)
class TreeHead:
    builder: PublicKey
    log: bytes
    size: int
    root: bytes
    time: int

    def __post_init__(self) -> None:
        _uint(self.size, "size")
        _uint(self.time, "time")
        if len(self.root) != HASH_SIZE:
            raise TreeHeadError(f"tree head root must be {HASH_SIZE} bytes")
        if len(self.log) != LOG_ID_SIZE:
            raise TreeHeadError(f"tree head log id must be {LOG_ID_SIZE} bytes")

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                FORMAT,
                self.builder.name,
                self.builder.key,
                self.log,
                self.size,
                self.root,
                self.time,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> TreeHead:
        raw = _unpack(data, "tree head")
        if not isinstance(raw, list) or len(raw) != 7 or raw[0] != FORMAT:
            raise TreeHeadError(f"not a {FORMAT} tree head")
        _, name, key, log, size, root, when = raw
        if not isinstance(name, str) or not isinstance(key, bytes) or len(key) != PUBLIC_SIZE:
            raise TreeHeadError("tree head builder must be a name and a 32-byte key")
        if not isinstance(root, bytes) or not isinstance(log, bytes):
            raise TreeHeadError("tree head root and log id must be bytes")
        try:
            head = cls(PublicKey(name, key), log, _uint(size, "size"), root, _uint(when, "time"))
        except KeyFormatError as e:
            raise TreeHeadError(f"tree head builder: {e}") from None
        if head.encode() != data:
            raise TreeHeadError("tree head is not in canonical form")
        return head


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    head: TreeHead
    signature: bytes
    _valid: list[bool] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def builder(self) -> PublicKey:
        return self.head.builder

    @property
    def log(self) -> tuple[bytes, bytes]:
        """(key, log id): which log this head is of."""
        return self.head.builder.key, self.head.log

    def valid(self) -> bool:
        if not self._valid:
            self._valid.append(self.builder.verify(DOMAIN + self.head.encode(), self.signature))
        return self._valid[0]

    def encode(self) -> bytes:
        return msgpack.packb([self.head.encode(), self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> SignedTreeHead:
        raw = _unpack(data, "signed tree head")
        if not isinstance(raw, list) or len(raw) != 2:
            raise TreeHeadError("a signed tree head is [head, signature]")
        body, signature = raw
        if not isinstance(body, bytes):
            raise TreeHeadError("a signed tree head's head must be bytes")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise TreeHeadError(f"a tree head signature is {SIGNATURE_SIZE} bytes")
        signed = cls(TreeHead.decode(body), signature)
        if signed.encode() != data:
            raise TreeHeadError("signed tree head is not in canonical form")
        return signed


def sign(
    key: SecretKey, log: bytes, size: int, root: bytes, time: int | None = None
) -> SignedTreeHead:
    head = TreeHead(key.public, log, size, root, int(_time.time()) if time is None else time)
    return SignedTreeHead(head, key.sign(DOMAIN + head.encode()))
