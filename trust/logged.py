"""A claim, or a revocation of one (trust.revocation), as it travels with its place in
its builder's log:

    [signed claim or revocation: bin, signed tree head: bin, index: uint,
     [hash: bin(32), ...]]

The claim's (revocation's) body is leaf `index` of the tree the head signs; the hashes
are its RFC 9162 inclusion proof. `check` verifies all of it: the signature, the head's,
that both are by one key, and the proof. `decode_entry` takes either kind (a signed
claim is a 3-array, a signed revocation a 2-array).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from trust import bounded, merkle
from trust.claim import MAX_CLAIM, ClaimError, SignedClaim
from trust.key import PublicKey
from trust.revocation import RevocationError, SignedRevocation
from trust.treehead import SignedTreeHead, TreeHeadError

MAX_PROOF = 64  # hashes in an inclusion proof: a tree of 2^64 leaves
MAX_LOGGED = MAX_CLAIM + 4096


class LoggedError(ValueError):
    """Bytes that are not a logged claim, or one whose parts do not hold together."""


def _check(
    builder: bytes,
    valid: bool,
    leaf: bytes,
    head: SignedTreeHead,
    index: int,
    proof: tuple[bytes, ...],
) -> None:
    if builder != head.builder.key:
        raise LoggedError("the entry and the head are by different keys")
    if not valid:
        raise LoggedError("the entry's signature does not verify")
    if not head.valid():
        raise LoggedError("the head's signature does not verify")
    if not merkle.verify_inclusion(
        merkle.leaf_hash(leaf), index, head.head.size, proof, head.head.root
    ):
        raise LoggedError(
            f"the entry is not leaf {index} of the log of {head.head.size} its head signs"
        )


def _encode(entry: bytes, head: SignedTreeHead, index: int, proof: tuple[bytes, ...]) -> bytes:
    return msgpack.packb([entry, head.encode(), index, list(proof)], use_bin_type=True)


def _parts(data: bytes) -> tuple[bytes, SignedTreeHead, int, tuple[bytes, ...]]:
    """The entry's bytes, its head, index and proof; the entry is not decoded yet."""
    raw = bounded.unpack(
        data,
        LoggedError,
        "a logged entry",
        limit=MAX_LOGGED,
        max_array=MAX_PROOF,
        max_bin=MAX_CLAIM,
        max_str=0,
    )
    if not isinstance(raw, list) or len(raw) != 4:
        raise LoggedError("a logged entry is [claim or revocation, head, index, proof]")
    entry, head, index, proof = raw
    if not isinstance(entry, bytes) or not isinstance(head, bytes):
        raise LoggedError("a logged entry's entry and head are bytes")
    if type(index) is not int or index < 0:
        raise LoggedError("a logged entry's index is a whole number")
    if not isinstance(proof, list) or not all(
        isinstance(h, bytes) and len(h) == merkle.HASH_SIZE for h in proof
    ):
        raise LoggedError(f"an inclusion proof is a list of {merkle.HASH_SIZE}-byte hashes")
    try:
        signed_head = SignedTreeHead.decode(head)
    except TreeHeadError as e:
        raise LoggedError(f"the logged entry's head: {e}") from None
    return entry, signed_head, index, tuple(proof)


@dataclass(frozen=True, slots=True)
class LoggedClaim:
    claim: SignedClaim
    head: SignedTreeHead
    index: int
    proof: tuple[bytes, ...]

    @property
    def leaf(self) -> bytes:
        return self.claim.claim.encode()

    @property
    def signer(self) -> PublicKey:
        return self.claim.builder

    def check(self) -> None:
        _check(
            self.claim.builder.key,
            self.claim.claim_valid(),
            self.leaf,
            self.head,
            self.index,
            self.proof,
        )

    def encode(self) -> bytes:
        return _encode(self.claim.encode(), self.head, self.index, self.proof)

    @classmethod
    def decode(cls, data: bytes) -> LoggedClaim:
        """A logged claim, checked (`check`)."""
        logged = decode_entry(data)
        if not isinstance(logged, LoggedClaim):
            raise LoggedError("a logged revocation, not a logged claim")
        return logged


@dataclass(frozen=True, slots=True)
class LoggedRevocation:
    revocation: SignedRevocation
    head: SignedTreeHead
    index: int
    proof: tuple[bytes, ...]

    @property
    def leaf(self) -> bytes:
        return self.revocation.revocation.encode()

    @property
    def signer(self) -> PublicKey:
        return self.revocation.builder

    def check(self) -> None:
        _check(
            self.revocation.builder.key,
            self.revocation.valid(),
            self.leaf,
            self.head,
            self.index,
            self.proof,
        )

    def encode(self) -> bytes:
        return _encode(self.revocation.encode(), self.head, self.index, self.proof)


Logged = LoggedClaim | LoggedRevocation


def _is_revocation(entry: bytes) -> bool:
    """Told apart by the signed form's length: a claim has two signatures, a revocation one."""
    form = msgpack.unpackb(
        entry, max_array_len=4, max_bin_len=MAX_CLAIM, max_str_len=0, max_map_len=0, max_ext_len=0
    )
    return isinstance(form, list) and len(form) == 2


def decode_entry(data: bytes) -> Logged:
    """A logged claim or revocation, checked."""
    entry, head, index, proof = _parts(data)
    logged: Logged
    try:
        if _is_revocation(entry):
            logged = LoggedRevocation(SignedRevocation.decode(entry), head, index, proof)
        else:
            logged = LoggedClaim(SignedClaim.decode(entry), head, index, proof)
    except (ClaimError, RevocationError) as e:
        raise LoggedError(f"the logged entry: {e}") from None
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise LoggedError(f"the logged entry is not msgpack ({type(e).__name__})") from None
    logged.check()
    if logged.encode() != data:
        raise LoggedError("the logged entry is not in canonical form")
    return logged
