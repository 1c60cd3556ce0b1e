"""Crafted images: the reader refuses them with ImageError; it never hangs, crashes with
another exception, or reads outside the bytes it was given."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erofs import layout
from erofs.layout import ImageError
from erofs.reader import Image
from tests import trees
from tests.erofs.images import image_of

BASE = {
    "small": image_of(
        trees.Dir(
            {
                b"a": trees.File(5000, 1, True),
                b"l": trees.Link(b"a"),
                b"d": trees.Dir({b"x": trees.File(100, 2, False)}),
            }
        )
    )[0],
    "wide": image_of(
        trees.Dir({b"n%04d" % i: trees.File(i * 37 % 9000, i, False) for i in range(400)})
    )[0],
}


def _exercise(data: bytes) -> None:
    """Everything a user of the reader does with an image."""
    try:
        img = Image(data)
        for w in img.walk():
            if w.inode.kind == "file" and w.inode.layout == layout.LAYOUT_CHUNK_BASED:
                img.chunks(w.inode)
            elif w.inode.kind in ("file", "symlink"):
                img.read(w.inode)
    except ImageError:
        pass


@settings(max_examples=1200)
@given(
    st.sampled_from(sorted(BASE)),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_bit_flips(base: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(BASE[base])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    _exercise(bytes(data))


@settings(max_examples=300)
@given(st.sampled_from(sorted(BASE)), st.integers(0, 1 << 16))
def test_truncations(base: str, cut: int) -> None:
    data = BASE[base]
    _exercise(data[: cut % (len(data) + 1)])


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(BASE)),
    st.integers(0, 200),
    st.sampled_from([0, 1, 2, 4, 6, 8, 16, 20]),
    st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 1 << 20, 65535, 12345, 0]),
)
def test_out_of_range_fields(base: str, slot: int, field: int, value: int) -> None:
    """Overwrite a word in an inode slot (nid, size, block address...) with a wild value."""
    data = bytearray(BASE[base])
    meta = Image(BASE[base]).meta
    at = meta + slot * layout.SLOT + field
    if at + 4 <= len(data):
        struct.pack_into("<I", data, at, value)
    _exercise(bytes(data))


@pytest.mark.parametrize(
    "field, value",
    [
        ("root_nid", 0xFFFF),
        ("meta_blkaddr", 0xFFFFFFFF),
        ("extra_devices", 0xFFFF),
        ("blkszbits", 9),
    ],
)
def test_wild_superblock_fields(field: str, value: int) -> None:
    sb = Image(BASE["small"]).sb
    bad = dataclasses.replace(sb, **{field: value}).encode()
    data = bytearray(BASE["small"])
    data[layout.SUPER_OFFSET : layout.SUPER_OFFSET + len(bad)] = bad
    with pytest.raises(ImageError):
        img = Image(bytes(data))
        list(img.walk())


def test_a_directory_loop_is_refused() -> None:
    data = bytearray(BASE["small"])
    img = Image(BASE["small"])
    d = img.lookup(b"d")
    assert d.layout == layout.LAYOUT_FLAT_INLINE  # its dirents sit right after its inode
    raw = img.read(d)
    count = struct.unpack_from("<H", raw, 8)[0] // layout.erofs_dirent.SIZE
    x = next(
        i for i in range(count) if raw[struct.unpack_from("<H", raw, i * 12 + 8)[0] :][:1] == b"x"
    )
    struct.pack_into("<Q", data, d.data_at + x * layout.erofs_dirent.SIZE, d.nid)  # d/x is d again
    with pytest.raises(ImageError, match="twice"):
        list(Image(bytes(data)).walk())
