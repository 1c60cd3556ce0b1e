"""A claim as it travels with its place in its builder's log:

    [signed claim: bin, signed tree head: bin, index: uint, [hash: bin(32), ...]]

The claim body is leaf `index` of the tree the head signs; the hashes are its RFC 9162
inclusion proof. `check` verifies all of it: the claim's signature, the head's, that both
are by one key, and the proof.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from trust import merkle
from trust.claim import MAX_CLAIM, ClaimError, SignedClaim
from trust.treehead import SignedTreeHead, TreeHeadError

MAX_PROOF = 64  # hashes in an inclusion proof: a tree of 2^64 leaves
MAX_LOGGED = MAX_CLAIM + 4096


class LoggedError(ValueError):
    """Bytes that are not a logged claim, or one whose parts do not hold together."""


@dataclass(frozen=True, slots=True)
class LoggedClaim:
    claim: SignedClaim
    head: SignedTreeHead
    index: int
    proof: tuple[bytes, ...]

    @property
    def leaf(self) -> bytes:
        return self.claim.claim.encode()

    def check(self) -> None:
        if self.claim.builder.key != self.head.builder.key:
            raise LoggedError("the claim and the head are by different keys")
        if not self.claim.claim_valid():
            raise LoggedError("the claim's signature does not verify")
        if not self.head.valid():
            raise LoggedError("the head's signature does not verify")
        if not merkle.verify_inclusion(
            merkle.leaf_hash(self.leaf),
            self.index,
            self.head.head.size,
            self.proof,
            self.head.head.root,
        ):
            raise LoggedError(
                f"the claim is not leaf {self.index} of the log of {self.head.head.size} its head signs"
            )

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.claim.encode(), self.head.encode(), self.index, list(self.proof)],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> LoggedClaim:
        """A logged claim, checked (`check`)."""
        if len(data) > MAX_LOGGED:
            raise LoggedError(f"a logged claim of {len(data):,} bytes is too large")
        try:
            raw = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_CLAIM,
                max_str_len=0,
                max_array_len=MAX_PROOF,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
            raise LoggedError(f"not msgpack ({type(e).__name__})") from None
        if not isinstance(raw, list) or len(raw) != 4:
            raise LoggedError("a logged claim is [claim, head, index, proof]")
        claim, head, index, proof = raw
        if not isinstance(claim, bytes) or not isinstance(head, bytes):
            raise LoggedError("a logged claim's claim and head are bytes")
        if type(index) is not int or index < 0:
            raise LoggedError("a logged claim's index is a whole number")
        if not isinstance(proof, list) or not all(
            isinstance(h, bytes) and len(h) == merkle.HASH_SIZE for h in proof
        ):
            raise LoggedError(f"an inclusion proof is a list of {merkle.HASH_SIZE}-byte hashes")
        try:
            logged = cls(
                SignedClaim.decode(claim), SignedTreeHead.decode(head), index, tuple(proof)
            )
        except (ClaimError, TreeHeadError) as e:
            raise LoggedError(f"a part of the logged claim: {e}") from None
        logged.check()
        if logged.encode() != data:
            raise LoggedError("the logged claim is not in canonical form")
        return logged
