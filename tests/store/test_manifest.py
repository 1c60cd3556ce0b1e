import dataclasses
import tempfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings

from store import build, export, nar
from store.hash import Hash
from store.manifest import Entry, EntryKind, Manifest, ManifestError
from store.path import StorePath
from tests import trees

SP = StorePath("/nix/store", "1" * 32, "thing-1.0")
REFS = (StorePath("/nix/store", "2" * 32, "dep"), StorePath("/nix/store", "3" * 32, "other"))


def manifest_of(tree: trees.Node) -> tuple[Manifest, export.MemoryChunks, bytes]:
    data = nar.encode_bytes(trees.events(tree))
    chunks = export.MemoryChunks()
    m = build.from_nar([data], SP, references=reversed(REFS), deriver=REFS[0], on_chunk=chunks.add)
    return m, chunks, data


@given(trees.trees())
def test_encode_decode_round_trip(tree: trees.Node) -> None:
    m, _, _ = manifest_of(tree)
    data = m.encode()
    assert Manifest.decode(data) == m
    assert m.references == REFS  # sorted on the way in


@given(trees.trees())
def test_manifest_reproduces_the_nar(tree: trees.Node) -> None:
    m, chunks, data = manifest_of(tree)
    assert b"".join(bytes(p) for p in export.write_nar(m, chunks)) == data
    assert m.nar_size == len(data)


@settings(max_examples=30)
@given(trees.trees())
def test_same_manifest_from_directory_and_nar(tree: trees.Node) -> None:
    m, _, _ = manifest_of(tree)
    with tempfile.TemporaryDirectory() as d:
        trees.write(tree, Path(d) / "t")
        m2 = build.from_directory(str(Path(d) / "t"), SP, references=REFS, deriver=REFS[0])
    assert m2 == m and m2.digest() == m.digest()


def test_digest_is_deterministic_and_content_bound() -> None:
    tree = trees.Dir({b"f": trees.File(100_000, 7, False), b"g": trees.File(10, 7, True)})
    a, _, _ = manifest_of(tree)
    b, _, _ = manifest_of(tree)
    assert a.encode() == b.encode() and a.digest() == b.digest()
    c, _, _ = manifest_of(
        trees.Dir({b"f": trees.File(100_000, 8, False), b"g": trees.File(10, 7, True)})
    )
    assert c.digest() != a.digest()


def test_stats_count_unique_chunks() -> None:
    same = trees.File(200_000, 1, False)
    m, _, _ = manifest_of(trees.Dir({b"a": same, b"b": same, b"c": trees.File(5, 1, False)}))
    s = m.stats()
    assert (s.files, s.chunks, s.unique_chunks, s.inline_bytes) == (3, 8, 4, 5)
    assert s.unique_chunk_bytes == 200_000


def test_export_detects_corrupt_and_missing_chunks() -> None:
    m, chunks, _ = manifest_of(trees.Dir({b"f": trees.File(100_000, 3, False)}))
    d = next(m.chunk_digests())
    good = chunks.chunks[d]
    chunks.chunks[d] = b"\0" + good[1:]
    with pytest.raises(export.ChunkCorrupt, match="BLAKE3"):
        list(export.write_nar(m, chunks))
    chunks.chunks[d] = good[:-1]
    with pytest.raises(export.ChunkCorrupt, match="needs"):
        list(export.write_nar(m, chunks))
    del chunks.chunks[d]
    with pytest.raises(export.ChunkMissing, match=d.hex()):
        list(export.write_nar(m, chunks))


def test_export_checks_nar_hash() -> None:
    m, chunks, _ = manifest_of(trees.Dir({b"f": trees.File(1000, 3, False)}))
    forged = dataclasses.replace(m, nar_hash=Hash.sha256(bytes(32)))
    with pytest.raises(export.NarHashMismatch):
        list(export.write_nar(forged, chunks))


def _raw(m: Manifest) -> list:
    return msgpack.unpackb(m.encode(), raw=False)


def _pack(raw: list) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


@pytest.fixture
def sample() -> Manifest:
    m, _, _ = manifest_of(
        trees.Dir(
            {
                b"a": trees.File(100_000, 1, False),
                b"b": trees.Link(b"a"),
                b"c": trees.Dir({}),
                b"d": trees.File(3, 1, True),
            }
        )
    )
    return m


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.__setitem__(0, "ferry-manifest-2"), "not a ferry-manifest-1"),
        (lambda r: r.__setitem__(1, "/nix/store/bad"), "is not <32"),
        (lambda r: r.__setitem__(2, b"x"), "32 bytes"),
        (lambda r: r.__setitem__(3, r[3] + 8), "NarSize"),
        (lambda r: r.__setitem__(4, list(reversed(r[4]))), "sorted"),
        (lambda r: r[7][1].__setitem__(3, r[7][1][3][:-1]), "chunk digests"),
        (lambda r: r[7][1].__setitem__(1, 9), "unknown kind"),
        (lambda r: r[7].__setitem__(slice(1, 3), [r[7][2], r[7][1]]), "NAR rule"),
        (lambda r: r[7][3].__setitem__(2, 1), "no size or payload"),
        (lambda r: r[7][2].__setitem__(2, 5), "target's length"),
        (lambda r: r[7][4].__setitem__(3, b"toolong"), "inline file"),
        (lambda r: r.__setitem__(6, [224, [], 3000]), "power of two"),
        (lambda r: r.pop(), "not a ferry-manifest-1"),
    ],
)
def test_decode_rejects(sample: Manifest, mutate, message: str) -> None:
    raw = _raw(sample)
    mutate(raw)
    with pytest.raises(ManifestError, match=message):
        Manifest.decode(_pack(raw))


def test_decode_rejects_non_canonical_encoding(sample: Manifest) -> None:
    data = sample.encode()
    assert data[0] == 0x98  # fixarray of 8
    # The same array with a 16-bit length header decodes to equal values but is not canonical.
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.decode(b"\xdc\x00\x08" + data[1:])
    with pytest.raises(ManifestError, match="not valid msgpack"):
        Manifest.decode(data[:-3])


def test_entry_kinds_in_order(sample: Manifest) -> None:
    assert [(e.path, e.kind) for e in sample.entries] == [
        (b"", EntryKind.DIRECTORY),
        (b"a", EntryKind.REGULAR),
        (b"b", EntryKind.SYMLINK),
        (b"c", EntryKind.DIRECTORY),
        (b"d", EntryKind.EXECUTABLE),
    ]
    assert sample.entries[4] == Entry(
        b"d", EntryKind.EXECUTABLE, 3, inline=trees.File(3, 1, True).data()
    )
