"""Append-only Merkle trees as RFC 9162 (Certificate Transparency v2) defines them, §2.1:
the tree hash, inclusion proofs and consistency proofs, and their verification.

    leaf hash  SHA-256(0x00 || leaf)
    node hash  SHA-256(0x01 || left || right)
    MTH({})    SHA-256()
    MTH(D[n])  for n > 1: k = the largest power of two below n,
               node(MTH(D[0:k]), MTH(D[k:n]))

Verification follows the RFC's algorithms step by step (§2.1.3.2, §2.1.4.2), as Go's
`golang.org/x/mod/sumdb/tlog` and transparency-dev's `merkle` packages do; any proof
that does not fit the sizes exactly is refused. `Tree` keeps the leaf hashes of one
log and the hashes of its complete power-of-two subtrees, so proofs cost O(log n) hashes
once the subtrees are known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """The hashes of one append-only log's leaves, and what proofs need of them."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.leaves: list[bytes] = []
        self._complete: dict[tuple[int, int], bytes] = {}  # (start, size) of 2^k subtrees
        for h in leaf_hashes:
            self.append_hash(h)

    def __len__(self) -> int:
        return len(self.leaves)

    def append(self, leaf: bytes) -> int:
        """Add a leaf; its index."""
        return self.append_hash(leaf_hash(leaf))

    def append_hash(self, h: bytes) -> int:
        if len(h) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        self.leaves.append(h)
        return len(self.leaves) - 1

    def _hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end])."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self.leaves[start]
        complete = n & (n - 1) == 0
        if complete and (start, n) in self._complete:
            return self._complete[(start, n)]
        k = _split(n)
        h = node_hash(self._hash(start, start + k), self._hash(start + k, end))
        if complete:
            self._complete[(start, n)] = h
        return h

    def root(self, size: int | None = None) -> bytes:
        """The tree hash of the first `size` leaves (all of them by default)."""
        size = len(self.leaves) if size is None else size
        if not 0 <= size <= len(self.leaves):
            raise ValueError(f"the log has {len(self.leaves)} leaves, not {size}")
        return self._hash(0, size)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]): the audit path of leaf `index` in the tree of `size`."""
        size = len(self.leaves) if size is None else size
        if not 0 <= index < size <= len(self.leaves):
            raise ValueError(f"no leaf {index} in a tree of {size}")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index - start < k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start += k
        return proof[::-1]

    def consistency(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[0:new]): that the tree of `old` leaves is a prefix of that of `new`."""
        new = len(self.leaves) if new is None else new
        if not 0 <= old <= new <= len(self.leaves):
            raise ValueError(f"no consistency proof from {old} to {new} leaves")
        if old == 0 or old == new:
            return []
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [self._hash(start, end)]
        k = _split(n)
        if m <= k:
            return self._subproof(m, start, start + k, whole) + [self._hash(start + k, end)]
        return self._subproof(m - k, start + k, end, False) + [self._hash(start, start + k)]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether `leaf` (its leaf hash) is leaf `index` of the tree of `size` whose hash is
    `root` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether the tree of `old` leaves hashing to `old_root` is a prefix of the tree of
    `new` leaves hashing to `new_root` (RFC 9162 §2.1.4.2)."""
    if not 0 <= old <= new or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
