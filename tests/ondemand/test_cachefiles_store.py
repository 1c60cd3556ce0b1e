"""The cachefiles backend's daemon loop serving a real store through the emulated
device: the image and the slab come out through the anon fds, chunks the store lacked
are fetched and recorded, and the cache files read back as the tree."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from erofs.layout import LAYOUT_CHUNK_BASED
from erofs.reader import Image
from node.daemon.blobs import StoreBlobs
from node.daemon.slabmap import SlabMap
from node.local.image import image_of
from node.local.store import LocalStore
from ondemand import cachefiles
from ondemand.cachefiles import Open, Read
from ondemand.cachefilesd import CachefilesDaemon
from store import build, export, nar
from store.path import StorePath
from tests import trees
from tests.ondemand.test_cachefiles import EmulatedDevice

SP = StorePath("/nix/store", "9" * 32, "cached-1.0")
TREE = trees.Dir(
    {b"a": trees.File(200_000, 1, True), b"b": trees.File(70_000, 2, False), b"l": trees.Link(b"a")}
)


async def test_store_blobs_through_the_emulated_device(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    chunks = export.MemoryChunks()
    manifest = build.from_nar([nar.encode_bytes(trees.events(TREE))], SP, on_chunk=chunks.add)
    store = LocalStore(str(tmp_path / "store"))
    try:
        store.reserve(manifest)  # recorded, every chunk a hole
        img = image_of(store, SP)
        rows = store.index.chunks(list(set(manifest.chunk_digests())))
        slabs = SlabMap()
        slabs.add({d: (r.slab, r.offset) for d, r in rows.items()}, manifest, set())
        fetched: list[bytes] = []

        async def fetch(digests: list[bytes]) -> dict[bytes, bytes]:
            fetched.extend(digests)
            return {d: chunks.chunks[d] for d in digests}

        async def filled(digests: list[bytes]) -> None:
            with store.index.transaction():
                store.index.set_present([store.index.chunks(digests)[d].id for d in digests], True)
            slabs.have.update(digests)

        slab_rows = store.index.slabs()
        blobs = StoreBlobs(
            "ferry",
            os.path.join(store.data_dir, "slabs"),
            slabs,
            {r.name: r.id for r in slab_rows},
            fetch,
            filled,
        )
        (tmp_path / "meta.erofs").write_bytes(img.data)
        blobs.images[b"fsid-cached"] = str(tmp_path / "meta.erofs")
        for r in slab_rows:  # a reserved slab may not exist on disk yet
            with open(os.path.join(store.data_dir, "slabs", r.name), "ab") as f:
                f.truncate(max(r.size, os.fstat(f.fileno()).st_size))
        dev = EmulatedDevice()
        nursery.start_soon(CachefilesDaemon(dev, blobs).run)

        # O_DIRECT, as the kernel's anon fds write: an unaligned fill fails with EINVAL.
        image_fd = os.open(tmp_path / "cache-image", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        slab_fd = os.open(tmp_path / "cache-slab", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        await dev.send.send(
            cachefiles.encode(Open(1, 10, b"erofs,ferry", b"fsid-cached", image_fd, 0))
        )
        await dev.send.send(
            cachefiles.encode(Open(2, 11, b"erofs,ferry", slab_rows[0].name.encode(), slab_fd, 0))
        )
        await dev.until(lambda: len(dev.commands) == 2)
        assert dev.commands[0] == f"copen 1,{len(img.data)}".encode()
        await dev.send.send(cachefiles.encode(Read(3, 10, 0, len(img.data))))
        await dev.until(lambda: len(dev.completed) == 1)
        cached_image = Image((tmp_path / "cache-image").read_bytes())
        a = cached_image.lookup(b"a")
        assert a.layout == LAYOUT_CHUNK_BASED
        refs = cached_image.chunks(a)
        # EROFS reads file a's chunks: READs at their (unaligned-length) ranges of the slab.
        cs = cached_image.chunk_size(a)
        for i, ref in enumerate(refs):
            n = min(cs, a.size - i * cs)
            await dev.send.send(cachefiles.encode(Read(10 + i, 11, ref.blkaddr * 4096, n)))
        await dev.until(lambda: len(dev.completed) == 1 + len(refs))
        slab_cache = (tmp_path / "cache-slab").read_bytes()
        got = b"".join(
            slab_cache[r.blkaddr * 4096 : r.blkaddr * 4096 + min(cs, a.size - i * cs)]
            for i, r in enumerate(refs)
        )
        assert got == trees.File(200_000, 1, True).data()
        e = next(x for x in manifest.entries if x.path == b"a")
        assert sorted(fetched) == sorted(set(e.chunks))  # only file a's chunks were fetched
        assert all(store.index.chunks(list(e.chunks))[d].present for d in e.chunks)
    finally:
        store.close()
