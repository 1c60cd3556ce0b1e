import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import nix32
from store.hash import SIZES, Hash, HashError, compress


@given(st.binary(max_size=64))
def test_round_trip(data: bytes) -> None:
    text = nix32.encode(data)
    assert len(text) == nix32.encoded_length(len(data))
    assert set(text) <= set(nix32.ALPHABET)
    assert nix32.decode(text, len(data)) == data


def test_known_vectors() -> None:
    # sha256("") and a 20-byte all-ones digest, as printed by `nix-hash --to-base32`.
    empty = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert nix32.encode(empty) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    assert nix32.encode(b"\xff" * 20) == "z" * 32


def test_rejects_bad_text() -> None:
    with pytest.raises(nix32.Nix32Error, match="invalid nix32 character 'e'"):
        nix32.decode("e" * 32, 20)
    with pytest.raises(nix32.Nix32Error, match="cannot hold"):
        nix32.decode("0" * 31, 20)
    # 52 characters carry 260 bits: the top 4 must be zero for a 32-byte digest.
    with pytest.raises(nix32.Nix32Error, match="bits set beyond"):
        nix32.decode("z" * 52, 32)


def test_matches_nix_hash(nix) -> None:
    digests = [os.urandom(32) for _ in range(100)] + [bytes(32), b"\xff" * 32, bytes(range(32))]
    out = (
        nix.run("nix-hash", "--type", "sha256", "--to-base32", *(d.hex() for d in digests))
        .decode()
        .split()
    )
    assert out == [nix32.encode(d) for d in digests]
    back = nix.run("nix-hash", "--type", "sha256", "--to-base16", *out).decode().split()
    assert back == [nix32.decode(t, 32).hex() for t in out]


@given(
    st.sampled_from(sorted(SIZES)).flatmap(
        lambda a: st.tuples(st.just(a), st.binary(min_size=SIZES[a], max_size=SIZES[a]))
    )
)
def test_hash_round_trip_every_base(algo_digest: tuple[str, bytes]) -> None:
    h = Hash(*algo_digest)
    for text in (
        h.encode(),
        f"{h.algo}:{h.hex()}",
        h.sri(),
        f"{h.algo}:{h.sri().split('-', 1)[1]}",
    ):
        assert Hash.decode(text) == h


def test_hash_errors() -> None:
    with pytest.raises(HashError, match="no algorithm prefix"):
        Hash.decode("0" * 52)
    with pytest.raises(HashError, match="unknown hash algorithm"):
        Hash.decode("sha3:00")
    with pytest.raises(HashError, match="wrong length"):
        Hash.decode("sha256:abc")
    assert Hash.decode("0" * 52, default_algo="sha256") == Hash.sha256(bytes(32))


def test_compress_xor_folds() -> None:
    assert compress(bytes(range(32)), 20) == bytes(
        a ^ b for a, b in zip(range(20), list(range(20, 32)) + [0] * 8)
    )
