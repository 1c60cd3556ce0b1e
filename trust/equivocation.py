"""Proofs that a builder key told two stories: statements it signed that cannot both be
true of one append-only log. Any node can check one with nothing but the key in it, so
the proof travels: a node that holds one stops counting the key and hands it on.

Every part is of one log (one key, one log id; trust.treehead): a key used on two
machines keeps two logs, and two logs are not a lie.

    FORK    [0, signed head A, signed head B]
            two heads of one log and one size with different roots
    LEAVES  [1, signed head A, signed head B, index, leaf A, [hash, ...], leaf B, [hash, ...]]
            leaf `index` is A in head A's tree and B in head B's, each shown by its
            inclusion proof (RFC 9162): the two trees differ where both have leaves,
            so no consistency proof can join them
    CLAIMS  [2, logged claim A, logged claim B]  (trust.logged)
            two claims in one log for one store path with different outcomes

Every part is bounded and decoded as its own format decodes it (trust.treehead,
trust.claim); a proof whose parts do not show what its kind says is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from trust import bounded, merkle
from trust.claim import ClaimError
from trust.key import PublicKey
from trust.logged import MAX_LOGGED, MAX_PROOF, LoggedClaim, LoggedError
from trust.treehead import SignedTreeHead, TreeHeadError

MAX_EQUIVOCATION = 2 * MAX_LOGGED + 8192


class EquivocationError(ValueError):
    """Bytes that are not a proof of equivocation, or a proof that does not hold."""


@dataclass(frozen=True, slots=True)
class Fork:
    a: SignedTreeHead
    b: SignedTreeHead

    def check(self) -> PublicKey:
        _same_builder(self.a, self.b)
        if self.a.head.size != self.b.head.size or self.a.head.root == self.b.head.root:
            raise EquivocationError("a fork is two heads of one size with different roots")
        return self.a.builder

    def fields(self) -> list[object]:
        return [self.a.encode(), self.b.encode()]


@dataclass(frozen=True, slots=True)
class Leaves:
    a: SignedTreeHead
    b: SignedTreeHead
    index: int
    leaf_a: bytes
    proof_a: tuple[bytes, ...]
    leaf_b: bytes
    proof_b: tuple[bytes, ...]

    def check(self) -> PublicKey:
        _same_builder(self.a, self.b)
        if self.leaf_a == self.leaf_b:
            raise EquivocationError("the two leaves are the same")
        for head, leaf, proof in (
            (self.a, self.leaf_a, self.proof_a),
            (self.b, self.leaf_b, self.proof_b),
        ):
            if not merkle.verify_inclusion(
                merkle.leaf_hash(leaf), self.index, head.head.size, proof, head.head.root
            ):
                raise EquivocationError(
                    f"leaf {self.index} is not in the tree of {head.head.size} its proof names"
                )
        return self.a.builder

    def fields(self) -> list[object]:
        return [
            self.a.encode(),
            self.b.encode(),
            self.index,
            self.leaf_a,
            list(self.proof_a),
            self.leaf_b,
            list(self.proof_b),
        ]


@dataclass(frozen=True, slots=True)
class Claims:
    a: LoggedClaim
    b: LoggedClaim

    def check(self) -> PublicKey:
        try:
            self.a.check()
            self.b.check()
        except LoggedError as e:
            raise EquivocationError(f"a logged claim does not hold: {e}") from None
        _same_builder(self.a.head, self.b.head)
        if self.a.claim.claim.store_path != self.b.claim.claim.store_path:
            raise EquivocationError("the two claims are for different store paths")
        if self.a.claim.claim.outcome == self.b.claim.claim.outcome:
            raise EquivocationError("the two claims agree")
        return self.a.claim.builder

    def fields(self) -> list[object]:
        return [self.a.encode(), self.b.encode()]


Equivocation = Fork | Leaves | Claims
_KIND = {Fork: 0, Leaves: 1, Claims: 2}


def _same_builder(a: SignedTreeHead, b: SignedTreeHead) -> None:
    if a.builder.key != b.builder.key:
        raise EquivocationError("the two heads are by different keys")
    if a.head.log != b.head.log:
        raise EquivocationError("the two heads are of different logs (a key may keep several)")
    if not (a.valid() and b.valid()):
        raise EquivocationError("a head's signature does not verify")


def encode(proof: Equivocation) -> bytes:
    return msgpack.packb([_KIND[type(proof)], *proof.fields()], use_bin_type=True)


def _hashes(v: object) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > MAX_PROOF:
        raise EquivocationError(f"an inclusion proof is a list of at most {MAX_PROOF} hashes")
    if not all(isinstance(h, bytes) and len(h) == merkle.HASH_SIZE for h in v):
        raise EquivocationError(f"an inclusion proof's hashes are {merkle.HASH_SIZE} bytes")
    return tuple(v)


def decode(data: bytes) -> Equivocation:
    """The proof `data` holds, checked: it names a key that equivocated."""
    raw = bounded.unpack(
        data,
        EquivocationError,
        "a proof",
        limit=MAX_EQUIVOCATION,
        max_array=MAX_PROOF,
        max_bin=MAX_LOGGED,
        max_str=64,
    )
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise EquivocationError("a proof is an array whose first item is its kind")
    kind, *rest = raw
    try:
        proof: Equivocation
        if kind == 0 and len(rest) == 2 and all(isinstance(x, bytes) for x in rest):
            proof = Fork(SignedTreeHead.decode(rest[0]), SignedTreeHead.decode(rest[1]))
        elif kind == 1 and len(rest) == 7:
            a, b, index, leaf_a, proof_a, leaf_b, proof_b = rest
            if not all(isinstance(x, bytes) for x in (a, b, leaf_a, leaf_b)):
                raise EquivocationError("a LEAVES proof's heads and leaves are bytes")
            if type(index) is not int or index < 0:
                raise EquivocationError("a LEAVES proof's index is a whole number")
            proof = Leaves(
                SignedTreeHead.decode(a),
                SignedTreeHead.decode(b),
                index,
                leaf_a,
                _hashes(proof_a),
                leaf_b,
                _hashes(proof_b),
            )
        elif kind == 2 and len(rest) == 2 and all(isinstance(x, bytes) for x in rest):
            proof = Claims(LoggedClaim.decode(rest[0]), LoggedClaim.decode(rest[1]))
        else:
            raise EquivocationError(f"no proof of kind {kind} with {len(rest)} parts")
    except (TreeHeadError, ClaimError, LoggedError) as e:
        raise EquivocationError(f"a part of the proof: {e}") from None
    proof.check()
    if encode(proof) != data:
        raise EquivocationError("the proof is not in canonical form")
    return proof
