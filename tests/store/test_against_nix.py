"""ferry's NAR, NarHash and manifests against the real Nix 2.8 on the same trees."""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from store import build, dump, export, nar
from store.path import StorePath
from tests import trees

SP = StorePath("/nix/store", "0" * 32, "tree")


def check_tree(nix, root: Path, tmp: Path) -> None:
    """Everything ferry promises about one tree's NAR and manifest, against Nix."""
    theirs = nix.dump(root)
    ours = b"".join(bytes(p) for p in dump.dump(str(root)))
    assert ours == theirs, "NAR differs from nix-store --dump"

    # The parser accepts what Nix wrote, and the events re-encode to the same bytes.
    assert nar.encode_bytes(nar.parse_bytes(theirs)) == theirs

    chunks = export.MemoryChunks()
    m = build.from_directory(str(root), SP, on_chunk=chunks.add)
    assert m.nar_hash.nix32() == nix.hash_path(root)
    assert m.nar_size == len(theirs)
    assert b"".join(bytes(p) for p in export.write_nar(m, chunks)) == theirs
    assert build.from_nar([theirs], SP) == m

    # Nix restores our NAR into the same tree.
    tmp.mkdir(parents=True, exist_ok=True)
    restored = tmp / "restored"
    nix.restore(restored, ours)
    assert nix.dump(restored) == theirs


@settings(max_examples=60)
@given(trees.trees())
def test_hypothesis_trees_match_nix(nix, tree: trees.Node) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        trees.write(tree, root)
        check_tree(nix, root, Path(d))


def test_events_of_a_tree_match_nix(nix, tmp_path: Path) -> None:
    tree = trees.Dir(
        {b"b": trees.File(70_000, 1, True), b"a": trees.Link(b"b"), b"\xff": trees.Dir({})}
    )
    trees.write(tree, tmp_path / "t")
    assert nar.encode_bytes(trees.events(tree)) == nix.dump(tmp_path / "t")


def test_mixed_tree(nix, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "bin").mkdir(parents=True)
    (root / "share" / "empty-dir").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "dangling").symlink_to("/nowhere/at/all")
    (root / "abs").symlink_to("/bin/sh")
    (root / "empty").write_bytes(b"")
    (root / "share" / "readonly").write_bytes(b"x" * 300)
    os.chmod(root / "share" / "readonly", 0o444)
    with open(root / "big", "wb") as f:  # 40 MiB: 256 KiB chunks, crossing tiers
        for i in range(40):
            f.write(hashlib.sha256(b"%d" % i).digest() * (32768))
    check_tree(nix, root, tmp_path)
    m = build.from_directory(str(root), SP)
    big = next(e for e in m.entries if e.path == b"big")
    assert len(big.chunks) == 40 * 4 and m.chunking.chunk_size(big.size) == 256 * 1024


def test_single_file_and_symlink_roots(nix, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"just a file")
    os.chmod(tmp_path / "f", 0o755)
    check_tree(nix, tmp_path / "f", tmp_path / "1")
    (tmp_path / "l").symlink_to("f")
    check_tree(nix, tmp_path / "l", tmp_path / "2")


@pytest.mark.slow
def test_python_stdlib(nix, tmp_path: Path) -> None:
    # A copy, so Python writing .pyc files meanwhile cannot change the tree under us.
    root = tmp_path / "stdlib"
    shutil.copytree(
        sysconfig.get_paths()["stdlib"],
        root,
        symlinks=True,
        ignore=shutil.ignore_patterns("site-packages", "__pycache__"),
    )
    theirs = hashlib.sha256(nix.dump(root)).hexdigest()
    ours = hashlib.sha256()
    for p in dump.dump(str(root)):
        ours.update(p)
    assert ours.hexdigest() == theirs
    chunks = export.MemoryChunks()
    m = build.from_directory(str(root), SP, on_chunk=chunks.add)
    assert m.nar_hash.nix32() == nix.hash_path(root)
    again = hashlib.sha256()
    for p in export.write_nar(m, chunks):
        again.update(p)
    assert again.hexdigest() == theirs


def test_unsupported_file_type(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(dump.DumpError, match="not a file, directory or symlink"):
        list(dump.dump(str(tmp_path)))


def test_tree_deeper_than_a_nar_allows(tmp_path: Path) -> None:
    p = tmp_path / "deep"
    p.mkdir()
    for _ in range(64):
        p = p / "d"
        p.mkdir()
    with pytest.raises(dump.DumpError, match="more than 64 levels"):
        list(dump.dump(str(tmp_path / "deep")))
