"""A builder's revocation of one claim it signed by mistake: "do not count my claim D
for store path P". The revocation body is canonical msgpack, one array in a fixed order:

    ["ferry-revocation-1", builder_name: str, builder_key: bin(32), store_path: str,
     claim: bin(32, SHA-256 of the revoked claim's body), time: uint]

signed with ed25519 over `b"ferry-revocation-1\\0" + body`, a domain of its own (a
revocation's signature can never pass for a claim's or a head's). A signed revocation,
as stored and sent, is `[body: bin, signature: bin(64)]`.

A revocation counts only from the key that signed the claim, and only for that claim
(its digest covers the whole body: key, path, result and time). It is a leaf of the
builder's log like a claim (trust.claimlog), so an audit sees every claim the builder
took back, and it travels as a logged entry (trust.logged). Taking a claim back can only
make a node trust less, so any node may act on one at once.
"""

from __future__ import annotations

import hashlib
import time as _time
from dataclasses import dataclass, field

import msgpack

from store.path import StorePath, StorePathError
from trust import bounded
from trust.claim import Claim
from trust.key import PUBLIC_SIZE, SIGNATURE_SIZE, KeyFormatError, PublicKey, SecretKey

FORMAT = "ferry-revocation-1"
DOMAIN = FORMAT.encode() + b"\0"
DIGEST_SIZE = 32
MAX_REVOCATION = 2048
MAX_INT = (1 << 63) - 1


class RevocationError(ValueError):
    """Bytes that are not a valid, canonical revocation; the message says why."""


def claim_digest(claim: Claim) -> bytes:
    """What a revocation names a claim by: SHA-256 of its canonical body."""
    return hashlib.sha256(claim.encode()).digest()


def _unpack(data: bytes, what: str) -> object:
    return bounded.unpack(data, RevocationError, what, limit=MAX_REVOCATION, max_array=8)


@dataclass(frozen=True, slots=True)
class Revocation:
    builder: PublicKey
    store_path: StorePath
    claim: bytes  # claim_digest of the claim taken back
    time: int

    def __post_init__(self) -> None:
        if len(self.claim) != DIGEST_SIZE:
            raise RevocationError(f"a revocation names a claim by its {DIGEST_SIZE}-byte digest")
        if type(self.time) is not int or not 0 <= self.time <= MAX_INT:
            raise RevocationError(f"revocation time must be a whole number from 0 to {MAX_INT}")

    def revokes(self, claim: Claim) -> bool:
        return claim.builder.key == self.builder.key and claim_digest(claim) == self.claim

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                FORMAT,
                self.builder.name,
                self.builder.key,
                str(self.store_path),
                self.claim,
                self.time,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Revocation:
        raw = _unpack(data, "revocation")
        if not isinstance(raw, list) or len(raw) != 6 or raw[0] != FORMAT:
            raise RevocationError(f"not a {FORMAT} revocation")
        _, name, key, sp, digest, when = raw
        if not isinstance(name, str) or not isinstance(key, bytes) or len(key) != PUBLIC_SIZE:
            raise RevocationError("a revocation's builder is a name and a 32-byte key")
        if not isinstance(sp, str) or not isinstance(digest, bytes):
            raise RevocationError("a revocation names a store path and a claim digest")
        if type(when) is not int:
            raise RevocationError("a revocation's time is a whole number")
        try:
            revocation = cls(PublicKey(name, key), StorePath.parse(sp), digest, when)
        except (KeyFormatError, StorePathError) as e:
            raise RevocationError(f"revocation: {e}") from None
        if revocation.encode() != data:
            raise RevocationError("revocation is not in canonical form")
        return revocation


@dataclass(frozen=True, slots=True)
class SignedRevocation:
    revocation: Revocation
    signature: bytes
    _valid: list[bool] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def builder(self) -> PublicKey:
        return self.revocation.builder

    def valid(self) -> bool:
        if not self._valid:
            self._valid.append(
                self.builder.verify(DOMAIN + self.revocation.encode(), self.signature)
            )
        return self._valid[0]

    def encode(self) -> bytes:
        return msgpack.packb([self.revocation.encode(), self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> SignedRevocation:
        raw = _unpack(data, "signed revocation")
        if not isinstance(raw, list) or len(raw) != 2:
            raise RevocationError("a signed revocation is [revocation, signature]")
        body, signature = raw
        if not isinstance(body, bytes):
            raise RevocationError("a signed revocation's body is bytes")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise RevocationError(f"a revocation signature is {SIGNATURE_SIZE} bytes")
        signed = cls(Revocation.decode(body), signature)
        if signed.encode() != data:
            raise RevocationError("signed revocation is not in canonical form")
        return signed


def revoke(claim: Claim, key: SecretKey, time: int | None = None) -> SignedRevocation:
    """`key`'s revocation of its own `claim`."""
    if key.public.key != claim.builder.key:
        raise RevocationError(f"the claim is by {claim.builder}, not by {key.public}")
    revocation = Revocation(
        key.public,
        claim.store_path,
        claim_digest(claim),
        int(_time.time()) if time is None else time,
    )
    return SignedRevocation(revocation, key.sign(DOMAIN + revocation.encode()))
