"""The local store in-process: ingest/export against Nix, dedup, GC, verify, undo."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from node.local.errors import PathIncomplete, PathNotInStore, StoreInUse
from node.local.slab import BLOCK
from node.local.store import LocalStore
from store import build, dump, export, nar, restore
from store.path import StorePath
from tests import trees
from trust.claim import sign_manifest
from trust.key import SecretKey


def sp(name: str, n: int = 0) -> StorePath:
    return StorePath("/nix/store", str(n) * 32, name)


def publish(
    store: LocalStore,
    root: Path,
    path: StorePath,
    refs: tuple[StorePath, ...] = (),
    root_: bool = True,
):
    with store.ingest() as ing:
        m = build.from_directory(str(root), path, references=refs, on_chunk=ing.add_chunk)
        ing.commit(m, root=root_)
    return m, ing


def exported(store: LocalStore, path: StorePath) -> bytes:
    return b"".join(bytes(p) for p in export.write_nar(store.complete_manifest(path), store))


def table_counts(store: LocalStore) -> dict[str, int]:
    return {
        t: store.index.scalar(f"SELECT count(*) FROM {t}")
        for t in (
            "chunks",
            "manifests",
            "manifest_chunks",
            "paths",
            "path_refs",
            "claims",
            "roots",
            "freed",
        )
    }


@settings(max_examples=25)
@given(trees.trees())
def test_ingest_then_export_is_nix_store_dump(nix, tree: trees.Node) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        trees.write(tree, root)
        with LocalStore(os.path.join(d, "data")) as store:
            publish(store, root, sp("tree"))
            assert exported(store, sp("tree")) == nix.dump(root)
            restore.restore(store.complete_manifest(sp("tree")), store, os.path.join(d, "out"))
            assert nix.dump(os.path.join(d, "out")) == nix.dump(root)
            assert store.verify().ok


def test_chunks_are_aligned_and_stored_once(tmp_path: Path) -> None:
    tree = trees.Dir(
        {
            b"a": trees.File(200_000, 1, False),
            b"b": trees.File(200_000, 1, True),
            b"c": trees.File(5000, 2, False),
        }
    )
    trees.write(tree, tmp_path / "t")
    with LocalStore(str(tmp_path / "data")) as store:
        m, ing = publish(store, tmp_path / "t", sp("t"))
        assert m.stats().chunks == 9 and ing.new_chunks == m.stats().unique_chunks == 5
        offsets = [r.offset for r in store.index.all_chunks()]
        assert all(o % BLOCK == 0 for o in offsets) and len(set(offsets)) == 5


def test_two_versions_share_chunks(tmp_path: Path) -> None:
    v1 = {
        b"lib": trees.Dir({b"big.so": trees.File(3_000_000, 7, True)}),
        b"doc": trees.File(90_000, 3, False),
    }
    v2 = {**v1, b"doc": trees.File(90_000, 4, False)}
    trees.write(trees.Dir(v1), tmp_path / "v1")
    trees.write(trees.Dir(v2), tmp_path / "v2")
    with LocalStore(str(tmp_path / "data")) as store:
        publish(store, tmp_path / "v1", sp("pkg-1.0", 1))
        first = store.stats()
        _, ing = publish(store, tmp_path / "v2", sp("pkg-1.1", 2))
        s = store.stats()
    assert ing.new_chunks == 2 and ing.new_bytes == 90_000  # only the changed doc
    assert s.paths == 2 and s.chunk_bytes == 2 * first.chunk_bytes
    assert s.unique_bytes == first.unique_bytes + 90_000
    assert s.dedup_ratio > 1.9
    assert s.slab_disk_bytes < 1.1 * s.unique_bytes + 64 * BLOCK


def test_gc_follows_roots_and_references(tmp_path: Path) -> None:
    for name, seed in (("dep", 1), ("app", 2), ("old", 3)):
        trees.write(trees.Dir({b"f": trees.File(300_000, seed, False)}), tmp_path / name)
    dep, app, old = sp("dep-1", 1), sp("app-1", 2), sp("old-1", 3)
    with LocalStore(str(tmp_path / "data")) as store:
        publish(store, tmp_path / "dep", dep, root_=False)
        publish(store, tmp_path / "app", app, refs=(dep,))
        publish(store, tmp_path / "old", old, root_=False)
        disk = store.stats().slab_disk_bytes
        dry = store.gc(dry_run=True)
        assert dry.removed_paths == (str(old),) and dry.freed_chunks == 5
        assert table_counts(store)["paths"] == 3  # nothing changed
        r = store.gc()
        assert r.removed_paths == (str(old),) and r.freed_bytes == 300_000 + (-300_000 % BLOCK)
        assert store.stats().slab_disk_bytes <= disk - 300_000
        assert exported(store, app) and exported(store, dep)  # dep is kept: app refers to it
        store.remove_root(app)
        assert set(store.gc().removed_paths) == {str(app), str(dep)}
        assert table_counts(store) == dict.fromkeys(table_counts(store), 0)
        assert store.stats().slab_disk_bytes == 0


def test_verify_finds_corruption_and_repair_lets_republish_fix_it(tmp_path: Path) -> None:
    trees.write(
        trees.Dir({b"f": trees.File(300_000, 1, False), b"g": trees.File(70_000, 2, False)}),
        tmp_path / "t",
    )
    with LocalStore(str(tmp_path / "data")) as store:
        publish(store, tmp_path / "t", sp("t"))
        victim = next(store.index.all_chunks())
        slab = store.slab(victim.slab)
        slab.write(victim.offset + 10, b"X")
        r = store.verify()
        assert [d for d, _ in r.corrupt] == [victim.digest] and r.chunks == 7
        assert r.bad_paths == [(str(sp("t")), "1 of its chunks are corrupt")]
        with pytest.raises(export.ChunkCorrupt):
            exported(store, sp("t"))
        store.verify(repair=True)
        with pytest.raises(PathIncomplete):
            store.complete_manifest(sp("t"))
        _, ing = publish(store, tmp_path / "t", sp("t"))
        assert ing.new_chunks == 1
        assert store.verify().ok and exported(store, sp("t")) == b"".join(
            bytes(p) for p in dump.dump(str(tmp_path / "t"))
        )


def test_slabs_roll_over_at_their_cap(tmp_path: Path) -> None:
    trees.write(trees.Dir({b"f": trees.File(1_000_000, 1, False)}), tmp_path / "t")
    with LocalStore(str(tmp_path / "data"), slab_cap=256 * 1024) as store:
        publish(store, tmp_path / "t", sp("t"))
        assert len(store.index.slabs()) == 4
        assert all(r.size <= 256 * 1024 for r in store.index.slabs())
        assert exported(store, sp("t")) == b"".join(
            bytes(p) for p in dump.dump(str(tmp_path / "t"))
        )


def test_a_second_opener_is_told_who_holds_the_store(tmp_path: Path) -> None:
    with (
        LocalStore(str(tmp_path / "data")),
        pytest.raises(StoreInUse, match=f"in use by pid {os.getpid()}"),
    ):
        LocalStore(str(tmp_path / "data"))
    LocalStore(str(tmp_path / "data")).close()  # released on close


def _assert_untouched(store: LocalStore) -> None:
    assert table_counts(store) == dict.fromkeys(table_counts(store), 0)
    assert all(store.slab(r.id).size() == r.size == 0 for r in store.index.slabs())
    assert store.stats().slab_disk_bytes == 0


@pytest.mark.parametrize(
    "batch", [64 << 20, 100_000]
)  # the failure comes before / after batches commit
def test_bad_input_leaves_nothing_behind(tmp_path: Path, nix, batch: int) -> None:
    trees.write(
        trees.Dir({b"a": trees.File(900_000, 1, False), b"z": trees.File(10, 2, False)}),
        tmp_path / "t",
    )
    good = nix.dump(tmp_path / "t")
    cases = {
        "truncated NAR": good[: len(good) - 100],
        "NAR breaking a rule": good.replace(
            b"\x01\x00\x00\x00\x00\x00\x00\x00z\x00", b"\x01\x00\x00\x00\x00\x00\x00\x00/\x00"
        ),
    }
    assert cases["NAR breaking a rule"] != good
    with LocalStore(str(tmp_path / "data"), batch_bytes=batch) as store:
        for data in cases.values():
            with pytest.raises(nar.NarError), store.ingest() as ing:
                m = build.from_nar(
                    [data[i : i + 65536] for i in range(0, len(data), 65536)],
                    sp("t"),
                    on_chunk=ing.add_chunk,
                )
                ing.commit(m)
            _assert_untouched(store)
        # A socket in the tree, found after a big file was already chunked.
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / "t" / "zz-socket"))
        try:
            with pytest.raises(dump.DumpError, match="is a socket, not a file"):
                publish(store, tmp_path / "t", sp("t"))
        finally:
            s.close()
        _assert_untouched(store)
        os.unlink(tmp_path / "t" / "zz-socket")
        publish(store, tmp_path / "t", sp("t"))  # and the store works afterwards
        assert exported(store, sp("t")) == good


def test_unknown_paths(tmp_path: Path) -> None:
    with LocalStore(str(tmp_path / "data")) as store:
        with pytest.raises(PathNotInStore, match="is not in this ferry store"):
            store.manifest(sp("nope"))
        with pytest.raises(PathNotInStore):
            store.remove_path(sp("nope"))


def test_a_store_reopens_as_it_was(tmp_path: Path) -> None:
    trees.write(trees.Dir({b"f": trees.File(500_000, 9, False)}), tmp_path / "t")
    with LocalStore(str(tmp_path / "data")) as store:
        publish(store, tmp_path / "t", sp("t"))
        before = store.stats()
    with LocalStore(str(tmp_path / "data")) as store:
        # The index file may shrink (its WAL is checkpointed on close); nothing else moves.
        assert dataclasses.replace(store.stats(), index_bytes=0) == dataclasses.replace(
            before, index_bytes=0
        )
        assert store.verify().ok


def test_real_tree_round_trips_and_a_second_version_shares_its_chunks(tmp_path: Path, nix) -> None:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    v1 = tmp_path / "pylib-1"
    for sub in ("email", "json", "asyncio", "lib-dynload"):
        shutil.copytree(
            stdlib / sub, v1 / sub, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    v2 = tmp_path / "pylib-2"
    shutil.copytree(v1, v2, symlinks=True)
    (v2 / "json" / "__init__.py").write_text((v1 / "json" / "__init__.py").read_text() + "\n# 2\n")
    with LocalStore(str(tmp_path / "data")) as store:
        publish(store, v1, sp("pylib-1", 1))
        one = store.stats()
        _, ing = publish(store, v2, sp("pylib-2", 2))
        two = store.stats()
        assert exported(store, sp("pylib-1", 1)) == nix.dump(v1)
        assert exported(store, sp("pylib-2", 2)) == nix.dump(v2)
    assert ing.new_chunks == 1  # the one changed file
    assert two.chunk_bytes == 2 * one.chunk_bytes + len("\n# 2\n")
    assert two.unique_bytes - one.unique_bytes == (v2 / "json" / "__init__.py").stat().st_size


def test_claims_by_keys_outside_the_policy_are_kept_within_a_budget(tmp_path: Path) -> None:
    sp = StorePath("/nix/store", "4" * 32, "flooded-1.0")
    data = nar.encode_bytes(trees.events(trees.Dir({b"f": trees.File(100, 1, False)})))
    manifest = build.from_nar([data], sp)
    builder, solo = SecretKey.generate("builder-a"), SecretKey.generate("solo")
    real = sign_manifest(manifest, builder)
    junk = [sign_manifest(manifest, SecretKey.generate(f"junk-{i}")) for i in range(5)]
    policy = frozenset({builder.public.encode()})
    # Peers' claims come in through the reader's connection (see NodeStore).
    with LocalStore(str(tmp_path / "data")) as local, contextlib.closing(local.reader()) as store:
        assert store.add_claims(junk, policy, others_per_path=2) == (2, 3)
        assert store.add_claims([junk[0]], policy, others_per_path=2) == (0, 0)  # known: no junk
        assert store.add_claims([real], policy, others_per_path=2) == (1, 0)  # always kept
        assert store.add_claims([sign_manifest(manifest, solo)], policy, 3) == (1, 0)
        second = sign_manifest(manifest, solo, time=7)  # the same key, another claim
        assert store.add_claims([second], policy, others_per_path=9) == (0, 1)  # one a key
        assert store.add_claims([second], None) == (1, 0)  # no policy given: no budget
        found = store.claims_by_hash(sp.hash_part)
        assert real in found and len(found) == 5
