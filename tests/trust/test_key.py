"""Nix-format keys: round trips, interop with real Nix 2.8 both ways, key files."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trust import keyfile
from trust.key import KeyFormatError, PublicKey, SecretKey
from trust.keyfile import KeyFileError

NIX = ("nix", "--extra-experimental-features", "nix-command")

names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
    min_size=1,
    max_size=40,
)


@given(name=names, seed=st.binary(min_size=32, max_size=32))
def test_round_trip(name: str, seed: bytes) -> None:
    sk = SecretKey(name, seed)
    assert SecretKey.decode(sk.encode()) == sk
    assert PublicKey.decode(sk.public.encode()) == sk.public
    assert sk.public.verify(b"msg", sk.sign(b"msg"))
    assert not sk.public.verify(b"msg!", sk.sign(b"msg"))


def test_secret_repr_hides_seed() -> None:
    sk = SecretKey.generate("k")
    assert base64.b64encode(sk.seed).decode() not in repr(sk) and "k" in repr(sk)


def test_nix_written_keys_load(nix, tmp_path: Path) -> None:
    # nix-store --generate-binary-cache-key, and nix key generate-secret (stdout).
    sk_path, pk_path = tmp_path / "k.sec", tmp_path / "k.pub"
    nix.run(
        "nix-store",
        "--generate-binary-cache-key",
        "cache.example.org-1",
        str(sk_path),
        str(pk_path),
    )
    sk = keyfile.load_secret(str(sk_path))
    assert sk.name == "cache.example.org-1"
    assert keyfile.load_public(str(pk_path)) == sk.public

    text = nix.run(*NIX, "key", "generate-secret", "--key-name", "other-1").decode()
    pub = nix.run(*NIX, "key", "convert-secret-to-public", input=text.encode()).decode()
    assert SecretKey.decode(text).public == PublicKey.decode(pub)


def test_ferry_keys_load_in_nix(nix, tmp_path: Path) -> None:
    sk = SecretKey.generate("ferry-builder-1")
    keyfile.write_secret(str(tmp_path / "s"), sk)
    keyfile.write_public(str(tmp_path / "p"), sk.public)
    # Nix derives the same public key from our secret file...
    pub = nix.run(
        *NIX, "key", "convert-secret-to-public", input=(tmp_path / "s").read_bytes()
    ).decode()
    assert pub.strip() == (tmp_path / "p").read_text() == sk.public.encode()


def test_secret_file_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        keyfile.write_secret(str(tmp_path / "s"), SecretKey.generate("a"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o600
    before = (tmp_path / "s").read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        keyfile.write_secret(str(tmp_path / "s"), SecretKey.generate("b"))
    assert (tmp_path / "s").read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_readable_secret_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "s"
    keyfile.write_secret(str(path), SecretKey.generate("a"))
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=r"accessible by others .*chmod 600"):
        keyfile.load_secret(str(path))
    os.chmod(path, 0o600)
    assert keyfile.load_secret(str(path)).name == "a"


# Fixed keys, not generated ones: the parameters name the tests, and every pytest-xdist
# worker must collect the same names.
GOOD_SECRET = SecretKey("k", bytes(range(32)))
GOOD_PUB = GOOD_SECRET.public.encode()


@pytest.mark.parametrize(
    "text, message",
    [
        ("k:not*base64", "not valid base64"),
        ("k:" + base64.b64encode(b"x" * 31).decode(), "has 31 bytes"),
        ("k:" + base64.b64encode(b"x" * 33).decode(), "has 33 bytes"),
        ("AAAA", "no 'name:' prefix"),
        (":" + GOOD_PUB.partition(":")[2], "key name '' is not valid"),
        ("a b:" + GOOD_PUB.partition(":")[2], "is not valid"),
        (GOOD_SECRET.encode(), "is a secret key where a public key was expected"),
    ],
)
def test_bad_public_keys(text: str, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        PublicKey.decode(text)


def test_bad_secret_keys() -> None:
    sk = SecretKey.generate("k")
    raw = base64.b64decode(sk.encode().partition(":")[2])
    with pytest.raises(KeyFormatError, match="public key where a secret key"):
        SecretKey.decode(sk.public.encode())
    with pytest.raises(KeyFormatError, match="has 63 bytes"):
        SecretKey.decode("k:" + base64.b64encode(raw[:63]).decode())
    flipped = raw[:40] + bytes([raw[40] ^ 1]) + raw[41:]
    with pytest.raises(KeyFormatError, match="corrupt"):
        SecretKey.decode("k:" + base64.b64encode(flipped).decode())


def test_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="missing: no such file"):
        keyfile.load_secret(str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="is a directory"):
        keyfile.load_public(str(tmp_path))
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    with pytest.raises(KeyFileError, match="larger than 4,096 bytes"):
        keyfile.load_public(str(tmp_path / "big"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFileError, match="not ASCII"):
        keyfile.load_public(str(tmp_path / "bin"))
