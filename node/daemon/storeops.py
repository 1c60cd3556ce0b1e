"""The store commands (`ferry store stats|list`, `root`, `gc`, `verify`, `export`,
`materialize`) answered by a running node, so upkeep never means stopping it.

Reads go to the node's reader (or, for the long ones, a reader of their own, so peers
and the gateway are not held up); writes take the write lock for a moment; GC goes a
batch at a time (collector.py). A path being exported or materialized is pinned."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.daemon import api
from node.daemon.collector import Collector
from node.daemon.nodestore import NodeStore
from node.local.image import image_of
from node.local.index import Index
from node.local.store import ReaderChunks, StoreReader, VerifyReport, verify_store
from store import restore
from store.export import write_nar
from store.path import StorePath

Progress = Callable[[Any], Awaitable[None]]
VERIFY_REPORT_EVERY = 0.2  # seconds between progress messages of a verify


class StoreOps:
    def __init__(self, store: NodeStore, collector: Collector) -> None:
        self.store = store
        self.collector = collector

    async def stats(self) -> api.StoreStatsReply:
        s = await self.store.read(self.store.reader.stats)
        return api.StoreStatsReply(
            self.store.data_dir,
            s.paths,
            s.complete_paths,
            s.roots,
            s.nar_bytes,
            s.chunk_bytes,
            s.unique_chunks,
            s.unique_bytes or 0,
            s.slab_disk_bytes,
            s.index_bytes,
        )

    async def listing(self) -> api.StoreListing:
        index = self.store.reader.index
        return api.StoreListing(tuple(await self.store.read(listed, index)))

    async def roots(self, req: api.RootsRequest) -> api.Roots:
        local = self.store.store
        paths = [str(StorePath.parse(p)) for p in req.store_paths]
        changed: list[str] = []
        not_roots: list[str] = []

        def work() -> None:
            for p in paths:
                if req.action == "add":
                    local.add_root(p)  # PathNotInStore for a path the store lacks
                    changed.append(p)
                elif local.remove_root(p):
                    changed.append(p)
                else:
                    not_roots.append(p)

        if req.action in ("add", "remove"):
            async with self.store.write_lock:
                await self.store.write(work)
        roots = await self.store.read(self.store.reader.index.roots)
        return api.Roots(tuple(roots), tuple(changed), tuple(not_roots))

    async def gc(self, dry_run: bool) -> api.GcDone:
        r = await self.collector.gc(dry_run)
        return api.GcDone(r.removed_paths, r.freed_chunks, r.freed_bytes, r.dry_run)

    async def verify(self, repair: bool, progress: Progress) -> api.Verified:
        token = trio.lowlevel.current_trio_token()
        reader = self.store.store.reader()  # its own: a long read holds up nobody
        try:
            total = await trio.to_thread.run_sync(
                reader.index.scalar, "SELECT sum(length) FROM chunks WHERE present = 1"
            )
            done = [0, 0.0]

            def advance(n: int) -> None:
                done[0] += n
                now = trio.from_thread.run_sync(trio.current_time, trio_token=token)
                if now - done[1] >= VERIFY_REPORT_EVERY:
                    done[1] = now
                    trio.from_thread.run(
                        progress, api.VerifyProgress(total, int(done[0])), trio_token=token
                    )

            if repair:
                # Repairing marks chunks absent: one writer at a time.
                async with self.store.write_lock:
                    r = await trio.to_thread.run_sync(_verify, reader, True, advance)
            else:
                r = await trio.to_thread.run_sync(_verify, reader, False, advance)
        finally:
            reader.close()
        return verified(r)

    async def export(self, store_path: str, progress: Progress) -> api.Exported:
        sp = str(StorePath.parse(store_path))
        token = trio.lowlevel.current_trio_token()
        with self.store.using([sp]):
            reader = self.store.store.reader()
            try:

                def work() -> int:
                    manifest = reader.complete_manifest(sp)
                    size = 0
                    for piece in write_nar(manifest, ReaderChunks(reader), verify_chunks=True):
                        size += len(piece)
                        trio.from_thread.run(progress, api.NarPiece(bytes(piece)), trio_token=token)
                    return size

                size = await trio.to_thread.run_sync(work)
            finally:
                reader.close()
        return api.Exported(sp, size)

    async def materialize(self, store_path: str, dest: str) -> api.Materialized:
        sp = str(StorePath.parse(store_path))
        with self.store.using([sp]):
            reader = self.store.store.reader()
            try:

                def work() -> None:
                    manifest = reader.complete_manifest(sp)
                    restore.restore(manifest, ReaderChunks(reader), dest)

                await trio.to_thread.run_sync(work)
            finally:
                reader.close()
        return api.Materialized(sp, dest)

    async def image(self, store_path: str) -> api.Image:
        sp = str(StorePath.parse(store_path))
        reader = self.store.store.reader()
        try:
            img = await trio.to_thread.run_sync(image_of, reader, sp)
        finally:
            reader.close()
        return api.Image(img.data, img.devices, img.inodes, img.absent_chunks)


def listed(index: Index) -> list[api.ListedPath]:
    """Every stored path as `ferry store list` shows it."""
    roots = set(index.roots())
    return [
        api.ListedPath(
            p.store_path,
            p.nar_hash,
            p.nar_size,
            p.manifest_digest.hex(),
            p.store_path in roots,
            index.missing_chunks(p.store_path),
        )
        for p in index.paths()
    ]


def verified(r: VerifyReport) -> api.Verified:
    return api.Verified(
        r.ok,
        r.chunks,
        r.bytes,
        r.repaired,
        tuple(api.CorruptChunk(d.hex(), p) for d, p in r.corrupt),
        tuple(api.BadPath(s, p) for s, p in r.bad_paths),
    )


def _verify(reader: StoreReader, repair: bool, advance: Callable[[int], None]) -> Any:
    return verify_store(reader.index, reader.slab, repair=repair, on_progress=advance)
