"""Build claims: canonical encoding, both signatures, and hostile bytes."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.hash import Hash
from store.path import StorePath
from tests.trust.claims import DEP, PATH_A, PATH_B, make
from trust import claim
from trust.claim import DOMAIN, Claim, ClaimError, SignedClaim
from trust.key import SecretKey

KEY = SecretKey.generate("builder-a")

store_paths = st.builds(
    StorePath,
    st.just("/nix/store"),
    st.text("0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32),
    st.from_regex(r"[a-z][a-z0-9.+_-]{0,30}", fullmatch=True),
)


@given(
    path=store_paths,
    digest=st.binary(min_size=32, max_size=32),
    manifest=st.binary(min_size=32, max_size=32),
    size=st.integers(1, 2**63 - 1),
    refs=st.lists(store_paths, max_size=5, unique_by=str),
    time=st.integers(0, 2**63 - 1),
)
def test_round_trip(path, digest, manifest, size, refs, time) -> None:
    refs = tuple(sorted(refs, key=str))
    signed = claim.sign(
        Claim(KEY.public, path, Hash.sha256(digest), size, refs, manifest, time), KEY
    )
    data = signed.encode()
    assert SignedClaim.decode(data) == signed
    assert signed.claim_valid() and signed.nix_valid()


def test_signatures_cover_what_they_should() -> None:
    s = make(KEY)
    # The claim signature is over the domain-separated body, the Nix one over the fingerprint.
    assert KEY.public.verify(DOMAIN + s.claim.encode(), s.signature)
    assert KEY.public.verify(s.claim.fingerprint().encode(), s.nix_signature)
    assert s.claim.fingerprint() == f"1;{PATH_A};{s.claim.nar_hash};4096;{DEP}"
    assert s.nix_sig().encode().startswith("builder-a:")
    # Neither signature stands in for the other.
    swapped = SignedClaim(s.claim, s.nix_signature, s.signature)
    assert not swapped.claim_valid() and not swapped.nix_valid()


@pytest.mark.parametrize(
    "change",
    [
        dict(store_path=PATH_B),
        dict(nar_size=4097),
        dict(references=()),
        dict(manifest_digest=b"\x23" * 32),
        dict(time=1),
        dict(nar_hash=Hash.sha256(b"\x12" * 32)),
    ],
)
def test_a_changed_claim_no_longer_verifies(change) -> None:
    s = make(KEY)
    forged = SignedClaim(dataclasses.replace(s.claim, **change), s.signature, s.nix_signature)
    assert not forged.claim_valid()
    assert SignedClaim.decode(forged.encode()) == forged  # well formed, just not signed


def test_key_must_match_builder() -> None:
    other = SecretKey.generate("builder-a")
    with pytest.raises(ClaimError, match="the key is"):
        claim.sign(make(KEY).claim, other)


def test_every_truncation_is_rejected() -> None:
    data = make(KEY).encode()
    for n in range(len(data)):
        with pytest.raises(ClaimError):
            SignedClaim.decode(data[:n])
    with pytest.raises(ClaimError):
        SignedClaim.decode(data + b"\x00")


def test_every_bit_flip_is_rejected_or_fails_to_verify() -> None:
    data = make(KEY).encode()
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            s = SignedClaim.decode(bytes(flipped))
        except ClaimError:
            continue
        # It decoded: then it must be a different claim or signature that fails to verify
        # (the only bytes that can change and still verify are none).
        assert not (s.claim_valid() and s.nix_valid()), f"bit {i} flipped and still valid"


def _envelope(body: object, sig: object = b"s" * 64, nix_sig: object = b"n" * 64) -> bytes:
    body_bytes = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([body_bytes, sig, nix_sig], use_bin_type=True)


def _fields(**change: object) -> list[object]:
    c = make(KEY).claim
    f = dict(
        fmt="ferry-claim-1",
        name=c.builder.name,
        key=c.builder.key,
        path=str(c.store_path),
        nar_hash=c.nar_hash.digest,
        size=c.nar_size,
        refs=[str(r) for r in c.references],
        manifest=c.manifest_digest,
        time=c.time,
    )
    f.update(change)
    return list(f.values())


@pytest.mark.parametrize(
    "data, message",
    [
        (_envelope(_fields(), sig=b"s" * 63), "signature is 63 bytes"),
        (_envelope(_fields(), sig=b"s" * 65), "signature is 65 bytes"),
        (_envelope(_fields(), nix_sig=b""), "Nix signature is 0 bytes"),
        (_envelope(_fields(fmt="ferry-claim-2")), "not a ferry-claim-1 claim"),
        (_envelope(_fields(key=b"k" * 31)), "builder key is 31 bytes"),
        (_envelope(_fields(nar_hash=b"h" * 20)), "NarHash is 20 bytes"),
        (_envelope(_fields(size=0)), "NarSize 0 is out of range"),
        (_envelope(_fields(size=-1)), "out of range"),
        (_envelope(_fields(size=True)), "wrong type"),
        (_envelope(_fields(size=1.5)), "wrong type"),
        (_envelope(_fields(time=-5)), "time -5 is out of range"),
        (_envelope(_fields(path="/nix/store/short")), "is not <32 nix32"),
        (_envelope(_fields(refs=[str(DEP), str(DEP)])), "sorted and unique"),
        (_envelope(_fields(refs=["/other/store/" + DEP.base_name])), "not in the store directory"),
        (_envelope(_fields(name="a b")), "key name"),
        (_envelope(_fields(name="x" * 5000)), "not valid msgpack"),  # over MAX_STRING
        (
            _envelope(_fields(refs=["/nix/store/x"] * 20_000)),
            "not valid msgpack",
        ),  # over MAX_REFERENCES
        (_envelope(_fields(fmt={"a": 1})), "not valid msgpack"),  # maps are never allowed
        (_envelope(b"\xc1"), "not valid msgpack"),
        (msgpack.packb([b"x"]), "not a signed ferry claim"),
        (b"\xc6\x7f\xff\xff\xff", "not valid msgpack"),  # a 2 GiB bin header, no data behind it
        (b"\x00" * (claim.MAX_CLAIM + 1), "exceeds"),
    ],
)
def test_malformed_claims(data: bytes, message: str) -> None:
    with pytest.raises(ClaimError, match=message):
        SignedClaim.decode(data)


def test_non_canonical_encodings_are_rejected() -> None:
    s = make(KEY)
    # The same values with a wider integer encoding: valid msgpack, not canonical.
    fields = _fields()
    packer = msgpack.Packer(use_bin_type=True)
    parts = [b"\x99"] + [packer.pack(f) for f in fields]
    parts[6] = b"\xcf" + s.claim.nar_size.to_bytes(8, "big")  # nar_size as uint64
    with pytest.raises(ClaimError, match="canonical"):
        SignedClaim.decode(_envelope(b"".join(parts), s.signature, s.nix_signature))
    # A str8 where a fixstr would do, in the envelope's body.
    wide = b"\x93" + b"\xc5" + len(s.claim.encode()).to_bytes(2, "big") + s.claim.encode()
    wide += packer.pack(s.signature) + packer.pack(s.nix_signature)
    with pytest.raises(ClaimError, match="canonical"):
        SignedClaim.decode(wide)
