from __future__ import annotations

from node.exchange.bases import chunk_bases, package_name, pick_base
from store import build, export, nar
from store.path import StorePath
from tests import trees


def sp(name: str, h: str = "1") -> StorePath:
    return StorePath("/nix/store", h * 32, name)


def test_package_names_drop_versions_as_nix_does() -> None:
    assert package_name(sp("hello-2.12.1")) == "hello"
    assert package_name(sp("python3.11-numpy-2.4.5")) == "python3.11-numpy"
    assert package_name(sp("glibc-2.40-66-bin")) == "glibc"
    assert package_name(sp("source")) == "source"


def test_the_closest_same_name_path_is_the_base() -> None:
    local = [
        sp("python3.11-numpy-2.4.5", "2"),
        sp("python3.11-numpy-1.26.0", "3"),
        sp("python3.11-scipy-2.4.6", "4"),
        sp("python3.11-numpy-2.4.6", "5"),
    ]
    target = sp("python3.11-numpy-2.4.6", "6")
    assert pick_base(target, local) == sp(
        "python3.11-numpy-2.4.6", "5"
    )  # a mass rebuild: same name
    assert pick_base(target, local[:3]) == sp("python3.11-numpy-2.4.5", "2")
    assert pick_base(sp("hello-1.0"), local) is None


def _manifest(tree: trees.Node, name: str) -> tuple:
    chunks = export.MemoryChunks()
    m = build.from_nar([nar.encode_bytes(trees.events(tree))], sp(name), on_chunk=chunks.add)
    return m, set(chunks.chunks)


def test_chunks_map_to_the_same_file_else_one_differing_only_in_digits() -> None:
    old, old_present = _manifest(
        trees.Dir(
            {
                b"lib": trees.Dir({b"libfoo.so.1.2": trees.File(300_000, 1, False)}),
                b"data": trees.File(200_000, 2, False),
            }
        ),
        "foo-1.2",
    )
    new, _ = _manifest(
        trees.Dir(
            {
                b"lib": trees.Dir({b"libfoo.so.1.3": trees.File(300_000, 3, False)}),
                b"data": trees.File(200_000, 4, False),
            }
        ),
        "foo-1.3",
    )
    bases = chunk_bases(new, old, old_present)
    by_path = {e.path: e for e in new.entries}
    old_by_path = {e.path: e for e in old.entries}
    for i, d in enumerate(by_path[b"data"].chunks):
        assert (
            bases[d][-1] == old_by_path[b"data"].chunks[i]
        )  # the same chunk position, last (nearest)
    for d in by_path[b"lib/libfoo.so.1.3"].chunks:
        assert set(bases[d]) <= set(old_by_path[b"lib/libfoo.so.1.2"].chunks)
    assert chunk_bases(new, old, set()) == {}  # nothing held locally: nothing to offer
