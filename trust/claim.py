"""Build claims: "builder B built store path P, and got this NarHash and this manifest".

The claim body is canonical msgpack, one array in a fixed order (no maps, no floats):

    ["ferry-claim-1",
     builder_name: str, builder_key: bin(32),
     store_path: str, nar_hash: bin(32, sha256), nar_size: uint,
     references: [str, ...] (full store paths, sorted, unique),
     manifest_digest: bin(32, BLAKE3 of the manifest's bytes),
     time: uint (seconds since the epoch)]

The claim signature is ed25519 over `b"ferry-claim-1\\0" + body`, so it can never be
mistaken for a signature over anything else (a Nix fingerprint, say). The same key also
signs the path's Nix fingerprint, so a node can hand unmodified Nix a narinfo carrying
the builders' own signatures. A signed claim, as stored and sent, is

    [body: bin, claim_signature: bin(64), nix_signature: bin(64)]

Decoding takes canonical bytes only and bounds every field, since claims arrive from
peers nobody vouches for.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from store.hash import Hash
from store.manifest import Manifest
from store.narinfo import fingerprint
from store.path import StorePath, StorePathError
from trust.key import PUBLIC_SIZE, SIGNATURE_SIZE, KeyFormatError, PublicKey, SecretKey
from trust.signature import NixSignature

FORMAT = "ferry-claim-1"
DOMAIN = FORMAT.encode() + b"\0"
DIGEST_SIZE = 32

# Bounds on what a peer can make us parse. A real closure member has at most a few
# hundred references; a store path is under 300 characters.
MAX_CLAIM = 4 << 20
MAX_REFERENCES = 16_384
MAX_STRING = 4096
MAX_INT = (1 << 63) - 1


class ClaimError(ValueError):
    """Bytes that are not a valid, canonical ferry claim; the message says why."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a builder says it got. Honest builders of one output agree on all of it."""

    nar_hash: Hash
    manifest_digest: bytes
    nar_size: int
    references: tuple[StorePath, ...]

    def short(self) -> str:
        return f"{self.nar_hash} / {self.manifest_digest.hex()[:16]}"


@dataclass(frozen=True, slots=True)
class Claim:
    builder: PublicKey
    store_path: StorePath
    nar_hash: Hash
    nar_size: int
    references: tuple[StorePath, ...]
    manifest_digest: bytes
    time: int

    def __post_init__(self) -> None:
        if self.nar_hash.algo != "sha256":
            raise ClaimError(f"claim NarHash must be sha256, not {self.nar_hash.algo}")
        if len(self.manifest_digest) != DIGEST_SIZE:
            raise ClaimError(f"claim manifest digest must be {DIGEST_SIZE} bytes")
        if not 0 < self.nar_size <= MAX_INT:
            raise ClaimError(f"claim NarSize {self.nar_size} is out of range")
        if not 0 <= self.time <= MAX_INT:
            raise ClaimError(f"claim time {self.time} is out of range")
        refs = [str(r) for r in self.references]
        if refs != sorted(set(refs)):
            raise ClaimError("claim references must be sorted and unique")
        for r in self.references:
            if r.store_dir != self.store_path.store_dir:
                raise ClaimError(f"claim reference {r} is not in {self.store_path.store_dir}")

    @classmethod
    def for_manifest(cls, manifest: Manifest, builder: PublicKey, time: int | None = None) -> Claim:
        return cls(
            builder,
            manifest.store_path,
            manifest.nar_hash,
            manifest.nar_size,
            tuple(sorted(set(manifest.references), key=str)),
            manifest.digest(),
            int(_time.time()) if time is None else time,
        )

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.nar_hash, self.manifest_digest, self.nar_size, self.references)

    def fingerprint(self) -> str:
        """The Nix narinfo fingerprint the builder's Nix signature covers."""
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                FORMAT,
                self.builder.name,
                self.builder.key,
                str(self.store_path),
                self.nar_hash.digest,
                self.nar_size,
                [str(r) for r in self.references],
                self.manifest_digest,
                self.time,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Claim:
        raw = _unpack(data, "claim")
        if not isinstance(raw, list) or len(raw) != 9 or raw[0] != FORMAT:
            raise ClaimError(f"not a {FORMAT} claim")
        _, name, key, sp, nar_hash, nar_size, refs, digest, when = raw
        _need(name, str, "builder name")
        _need(key, bytes, "builder key", PUBLIC_SIZE)
        _need(sp, str, "store path")
        _need(nar_hash, bytes, "NarHash", 32)
        _need(nar_size, int, "NarSize")
        _need(refs, list, "references")
        _need(digest, bytes, "manifest digest", DIGEST_SIZE)
        _need(when, int, "time")
        try:
            builder = PublicKey(name, key)
            store_path = StorePath.parse(sp)
            references = tuple(
                StorePath.decode(_need(r, str, "reference"), store_path.store_dir) for r in refs
            )
            claim = cls(
                builder, store_path, Hash.sha256(nar_hash), nar_size, references, digest, when
            )
        except (KeyFormatError, StorePathError) as e:
            raise ClaimError(f"claim: {e}") from None
        if claim.encode() != data:
            raise ClaimError("claim is not in canonical form")
        return claim


@dataclass(frozen=True, slots=True)
class SignedClaim:
    claim: Claim
    signature: bytes  # over DOMAIN + claim body
    nix_signature: bytes  # over the Nix fingerprint
    # Each signature is checked once per object: the fetch that receives a claim checks
    # it, and the policy that counts it checks it again (an ed25519 check costs 100 µs
    # and more here; a closure has thousands of claims).
    _checked: dict[str, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @property
    def builder(self) -> PublicKey:
        return self.claim.builder

    def claim_valid(self) -> bool:
        ok = self._checked.get("claim")
        if ok is None:
            ok = self._checked["claim"] = self.builder.verify(
                DOMAIN + self.claim.encode(), self.signature
            )
        return ok

    def nix_valid(self) -> bool:
        ok = self._checked.get("nix")
        if ok is None:
            ok = self._checked["nix"] = self.builder.verify(
                self.claim.fingerprint().encode(), self.nix_signature
            )
        return ok

    def valid(self) -> bool:
        return self.claim_valid() and self.nix_valid()

    def nix_sig(self) -> NixSignature:
        """The `Sig:` a narinfo for this path can carry."""
        return NixSignature(self.builder.name, self.nix_signature)

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.claim.encode(), self.signature, self.nix_signature], use_bin_type=True
        )

    @classmethod
    def decode(cls, data: bytes) -> SignedClaim:
        if len(data) > MAX_CLAIM:
            raise ClaimError(
                f"signed claim of {len(data):,} bytes exceeds the {MAX_CLAIM:,}-byte limit"
            )
        raw = _unpack(data, "signed claim")
        if not isinstance(raw, list) or len(raw) != 3:
            raise ClaimError(
                "not a signed ferry claim (expected [claim, signature, Nix signature])"
            )
        body, sig, nix_sig = raw
        _need(body, bytes, "body")
        _need(sig, bytes, "signature", SIGNATURE_SIZE)
        _need(nix_sig, bytes, "Nix signature", SIGNATURE_SIZE)
        signed = cls(Claim.decode(body), sig, nix_sig)
        if signed.encode() != data:
            raise ClaimError("signed claim is not in canonical form")
        return signed


def sign(claim: Claim, key: SecretKey) -> SignedClaim:
    if key.public != claim.builder:
        raise ClaimError(f"claim names builder {claim.builder} but the key is {key.public}")
    return SignedClaim(
        claim, key.sign(DOMAIN + claim.encode()), key.sign(claim.fingerprint().encode())
    )


def sign_manifest(manifest: Manifest, key: SecretKey, time: int | None = None) -> SignedClaim:
    return sign(Claim.for_manifest(manifest, key.public, time), key)


def _unpack(data: bytes, what: str) -> object:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_STRING,
            max_bin_len=MAX_CLAIM,
            max_array_len=MAX_REFERENCES,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ClaimError(
            f"{what} is not valid msgpack ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else "malformed"
    return text[:120]


def _need(v: Any, t: type, what: str, size: int | None = None) -> Any:
    # bool is an int to Python but not to msgpack; reject it like any other wrong type.
    if not isinstance(v, t) or isinstance(v, bool):
        raise ClaimError(
            f"claim {what} has the wrong type ({type(v).__name__}, expected {t.__name__})"
        )
    sized: Any = v  # isinstance against a runtime type narrows to object
    if size is not None and len(sized) != size:
        raise ClaimError(f"claim {what} is {len(sized)} bytes, expected {size}")
    return v
