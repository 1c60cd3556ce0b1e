"""A builder's claim log on disk: every claim body its key signs, in order, append-only.

    <dir>/<builder key, hex>.log    records: length (uint32, big-endian), claim body
    <dir>/<builder key, hex>.id     16 random bytes: the log's id, in every head it signs

A leaf is made durable (written and fsynced) before `append` returns, and a head is
only ever signed over durable leaves: a builder that crashed and signed a different
claim at an index it had already put in a signed head would have forked its own log,
which peers take for a lie (trust.equivocation). At open, a record cut short by a crash
is dropped, and the file is truncated to the last whole record.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from store import userfile
from trust import treehead
from trust.claim import MAX_CLAIM, Claim, ClaimError
from trust.key import SecretKey
from trust.merkle import Tree
from trust.revocation import Revocation, RevocationError
from trust.treehead import LOG_ID_SIZE, SignedTreeHead

HEADER = 4


class ClaimLogError(OSError):
    """The log file cannot be read or written; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Proved:
    """A leaf with what shows it is in the log: its index and the path to a signed head."""

    index: int
    head: SignedTreeHead
    proof: tuple[bytes, ...]


class ClaimLog:
    def __init__(self, directory: str, key: SecretKey) -> None:
        self.key = key
        self.path = os.path.join(directory, key.public.key.hex() + ".log")
        os.makedirs(directory, exist_ok=True)
        self.log_id = self._id(os.path.join(directory, key.public.key.hex() + ".id"))
        self.tree = Tree()
        self._index: dict[bytes, int] = {}  # leaf -> its first index
        self._by_digest: dict[bytes, int] = {}  # SHA-256 of a leaf (a claim's digest) -> index
        self._leaves: list[bytes] = []  # served to readers of the log (/ferry/log/1)
        # store path -> the claim in the log that stands for it (not revoked); built on
        # first use, since it decodes every leaf
        self._standing: dict[str, Claim] | None = None
        self._load()
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the log's life

    @staticmethod
    def _id(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                log_id = f.read()
        except FileNotFoundError:
            log_id = os.urandom(LOG_ID_SIZE)
            userfile.write_atomically(path, log_id, "a claim log's id")
            return log_id
        except OSError as e:
            raise ClaimLogError(f"cannot read {path}: {e.strerror}") from None
        if len(log_id) != LOG_ID_SIZE:
            raise ClaimLogError(f"{path} is not a claim log id ({LOG_ID_SIZE} bytes): move it away")
        return log_id

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            raise ClaimLogError(f"cannot read the claim log {self.path}: {e.strerror}") from None
        at = 0
        while at + HEADER <= len(data):
            (n,) = struct.unpack_from(">I", data, at)
            if n > MAX_CLAIM or at + HEADER + n > len(data):
                break
            self._add(bytes(data[at + HEADER : at + HEADER + n]))
            at += HEADER + n
        if at != len(data):
            # The tail of a write a crash cut short: never part of a signed head.
            with open(self.path, "r+b") as f:
                f.truncate(at)
                os.fsync(f.fileno())

    def _add(self, leaf: bytes) -> int:
        self._leaves.append(leaf)
        index = self.tree.append(leaf)
        self._index.setdefault(leaf, index)
        self._by_digest.setdefault(hashlib.sha256(leaf).digest(), index)
        if self._standing is not None:
            self._stand(leaf)
        return index

    def _stand(self, leaf: bytes) -> None:
        assert self._standing is not None
        try:
            claim = Claim.decode(leaf)
        except ClaimError:
            try:
                revocation = Revocation.decode(leaf)
            except RevocationError:
                return  # not this node's to judge here: `ferry trust audit` reports it
            held = self._standing.get(str(revocation.store_path))
            if held is not None and revocation.revokes(held):
                del self._standing[str(revocation.store_path)]
            return
        self._standing[str(claim.store_path)] = claim

    def standing(self, store_path: str) -> Claim | None:
        """The latest claim the log holds for `store_path` that was not revoked since."""
        if self._standing is None:
            self._standing = {}
            for leaf in self._leaves:
                self._stand(leaf)
        return self._standing.get(store_path)

    def __len__(self) -> int:
        return len(self.tree)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ClaimLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, leaf: bytes) -> int:
        """Log a claim body (once: one logged already keeps its index); its index."""
        return self.append_many([leaf])[0]

    def append_many(self, leaves: list[bytes]) -> list[int]:
        """Log claim bodies with one fsync for all of them; their indexes."""
        new = [x for x in dict.fromkeys(leaves) if x not in self._index]
        for leaf in new:
            if len(leaf) > MAX_CLAIM:
                raise ValueError(f"a claim of {len(leaf):,} bytes is too large to log")
        if new:
            try:
                self._file.write(b"".join(struct.pack(">I", len(x)) + x for x in new))
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as e:
                raise ClaimLogError(
                    f"cannot write the claim log {self.path}: {e.strerror}"
                ) from None
            for leaf in new:
                self._add(leaf)
        return [self._index[leaf] for leaf in leaves]

    def leaf(self, index: int) -> bytes:
        return self._leaves[index]

    def index_of(self, leaf: bytes) -> int | None:
        return self._index.get(leaf)

    def index_of_digest(self, digest: bytes) -> int | None:
        """The index of the leaf whose SHA-256 is `digest` (trust.revocation.claim_digest)."""
        return self._by_digest.get(digest)

    def head(self, time: int | None = None, size: int | None = None) -> SignedTreeHead:
        """The log's current size and root (or those of its first `size` leaves), signed."""
        size = len(self.tree) if size is None else size
        return treehead.sign(self.key, self.log_id, size, self.tree.root(size), time)

    def prove(self, leaf: bytes, head: SignedTreeHead) -> Proved:
        """That `leaf` is in the tree `head` signs (a head of this log)."""
        index = self._index.get(leaf)
        if index is None or index >= head.head.size:
            raise KeyError("the leaf is not in that head's tree")
        return Proved(index, head, tuple(self.tree.inclusion(index, head.head.size)))

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self.tree.consistency(old, new)
