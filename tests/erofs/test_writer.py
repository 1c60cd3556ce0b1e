"""The image writer against the reference tools: `fsck.erofs --device=<slab> --extract`
must accept every image and give back the tree it was written from."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erofs import layout
from erofs.reader import Image
from erofs.writer import Device, Entry, Kind, TreeError, write_image
from node.local.image import ImageUnsupported, entries_of
from tests import trees
from tests.conftest import require
from tests.erofs.images import Slab, fsck_extract, image_of, manifest_of, model, on_disk


@pytest.fixture(scope="module", autouse=True)
def _fsck() -> None:
    require(
        shutil.which("fsck.erofs") is not None, "fsck.erofs is not installed (Debian: erofs-utils)"
    )


def _roundtrip(tree: trees.Node, tmp: Path) -> bytes:
    image, slab, _ = image_of(tree)
    (tmp / "meta.erofs").write_bytes(image)
    (tmp / "slab").write_bytes(slab.data)
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    r = fsck_extract(tmp / "meta.erofs", tmp / "slab", out)
    assert r.returncode == 0, r.stderr + r.stdout
    assert on_disk(out) == model(tree)
    return image


dir_trees = st.builds(
    trees.Dir, st.dictionaries(st.one_of(trees.short_names, trees.names), trees.trees(), max_size=8)
)


@settings(max_examples=40)
@given(tree=dir_trees)
def test_fsck_extracts_what_was_written(
    tree: trees.Dir, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _roundtrip(tree, tmp_path_factory.mktemp("img"))


def _many(n: int, seed: int) -> dict[bytes, trees.Node]:
    rnd = random.Random(seed)
    return {
        b"f%05d" % i: trees.File(rnd.choice([0, 1, 300, 4096, 5000]), i, i % 3 == 0)
        for i in range(n)
    }


def _odd_names() -> dict[bytes, trees.Node]:
    rnd = random.Random(3)
    out: dict[bytes, trees.Node] = {}
    while len(out) < 300:
        name = bytes(
            rnd.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(rnd.randint(1, 255))
        )
        if name not in (b".", b".."):
            out[name] = trees.File(rnd.randint(0, 70_000), len(out), False)
    return out


def _deep(depth: int) -> trees.Node:
    node: trees.Node = trees.File(10, 1, True)
    for i in range(depth):
        node = trees.Dir({b"d%d" % i: node, b"x": trees.Link(b"../" * (i % 5 + 1))})
    return node


EDGE_CASES = {
    "5000 entries in one directory": trees.Dir(
        {b"big": trees.Dir(_many(5000, 1)), b"small": trees.Dir({})}
    ),
    "names of any bytes up to 255": trees.Dir(_odd_names()),
    "sizes around block and chunk limits": trees.Dir(
        {
            b"s%d" % s: trees.File(s, s, s % 2 == 0)
            for s in trees.BOUNDARY_SIZES
            + [16 << 20, (16 << 20) + 1, (64 << 20) + 5, 3 * 65536, 4096 * 15 + 4000]
        }
    ),
    "symlinks up to 4095 bytes": trees.Dir(
        {b"l%d" % n: trees.Link(b"t" * n) for n in (1, 10, 224, 225, 4000, 4063, 4064, 4095)}
    ),
    "deep directories": trees.Dir({b"root": _deep(60)}),  # NAR parsing stops at 64 levels
    "empty root": trees.Dir({}),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_trees(name: str, tmp_path: Path) -> None:
    _roundtrip(EDGE_CASES[name], tmp_path)


def test_same_tree_same_bytes() -> None:
    tree = EDGE_CASES["sizes around block and chunk limits"]
    assert image_of(tree)[0] == image_of(tree)[0]


def test_reader_sees_what_was_written() -> None:
    tree = trees.Dir(
        {
            **_many(700, 2),
            b"sub": trees.Dir(
                {b"l": trees.Link(b"../f00001"), b"big": trees.File(300_000, 9, True)}
            ),
        }
    )
    image, slab, m = image_of(tree)
    img = Image(image)
    seen = {w.path: w.inode for w in img.walk()}
    assert set(seen) == set(model(tree))
    assert img.sb.inos == len(seen)
    big = img.lookup(b"sub/big")
    assert big.size == 300_000 and big.mode & 0o777 == 0o555
    entry = next(e for e in m.entries if e.path == b"sub/big")
    assert [(c.device_id, c.blkaddr) for c in img.chunks(big)] == [
        slab.places[d] for d in entry.chunks
    ]
    assert img.read(img.lookup(b"sub/l")) == b"../f00001"
    assert img.read(img.lookup(b"f00000")) == trees.File(0, 0, True).data()


def test_a_lone_file_is_not_an_image() -> None:
    slab = Slab()
    with pytest.raises(ImageUnsupported, match="single file"):
        entries_of(manifest_of(trees.File(10, 1, False), slab), slab.places.__getitem__)


def test_bad_trees_are_named() -> None:
    with pytest.raises(TreeError, match="comes before its directory"):
        write_image([Entry(b"", Kind.DIR), Entry(b"a/b", Kind.FILE)], [])
    with pytest.raises(TreeError, match="4095"):
        write_image([Entry(b"", Kind.DIR), Entry(b"l", Kind.SYMLINK, data=b"x" * 4096)], [])
    with pytest.raises(TreeError, match="power of two"):
        from erofs.writer import Chunks

        write_image(
            [Entry(b"", Kind.DIR), Entry(b"f", Kind.FILE, 10, chunks=Chunks(3000, ((1, 0),)))],
            [Device(b"s", 1)],
        )
    assert layout.BLOCK == 4096
