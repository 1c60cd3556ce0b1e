import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import build, nix32
from store.path import StorePath, StorePathError

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?="
hash_parts = st.text(nix32.ALPHABET, min_size=32, max_size=32)
names = st.text(NAME_CHARS, min_size=1, max_size=211)
store_dirs = st.sampled_from(["/nix/store", "/gnu/store", "/tmp/x/nix/store", "/s"])


@given(store_dirs, hash_parts, names)
def test_round_trip(store_dir: str, h: str, name: str) -> None:
    sp = StorePath(store_dir, h, name)
    assert StorePath.decode(sp.encode(), store_dir) == sp
    assert StorePath.from_base_name(sp.base_name, store_dir) == sp


@pytest.mark.parametrize(
    "text, message",
    [
        ("/nix/store/" + "a" * 32 + "-", "too short|is not <32"),
        ("/nix/store/" + "a" * 32, "is not <32"),
        ("/nix/store/" + "a" * 31 + "-foo", "is not <32|must be 32"),
        ("/nix/store/" + "e" * 32 + "-foo", "must be 32 characters"),
        ("/nix/store/" + "a" * 32 + "_foo", "is not <32"),
        ("/nix/store/" + "a" * 32 + "-foo bar", "contains ' '"),
        ("/nix/store/" + "a" * 32 + "-f/o", "contains '/'"),
        ("/nix/store/" + "a" * 32 + "-" + "x" * 212, "longer than 211"),
        ("/other/" + "a" * 32 + "-foo", "not in the store directory"),
    ],
)
def test_rejects(text: str, message: str) -> None:
    with pytest.raises(StorePathError, match=message):
        StorePath.decode(text)


def test_name_of_211_is_fine_and_split() -> None:
    sp = StorePath.decode("/nix/store/" + "a" * 32 + "-" + "x" * 211)
    assert len(sp.name) == 211
    path, rest = StorePath.split(str(sp) + "/bin/sh")
    assert (path, rest) == (sp, "bin/sh")


def test_store_dir_is_checked() -> None:
    with pytest.raises(StorePathError, match="absolute"):
        StorePath("nix/store", "a" * 32, "x")


def test_source_path_matches_nix_store_add(nix, tmp_path: Path) -> None:
    # makeStorePath + compressHash + nix32 together: the path `nix-store --add` picks.
    tree = tmp_path / "hello-1.0"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_bytes(b"#!/bin/sh\necho hello\n")
    os.chmod(tree / "bin" / "hello", 0o755)
    store = tmp_path / "chroot"
    got = nix.run("nix-store", "--store", str(store), "--add", str(tree)).decode().strip()
    m = build.from_directory(str(tree), StorePath("/nix/store", "0" * 32, "x"))
    assert str(StorePath.for_source("hello-1.0", m.nar_hash)) == got
