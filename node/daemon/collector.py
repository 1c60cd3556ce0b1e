"""Freeing space while the node runs: `ferry gc` through the node, and eviction under
`max_store_size`.

Both drop paths no GC root needs, a small batch per turn of the write lock, so a fetch
or a publish waits for one batch at most (milliseconds), never for the whole
collection. Paths in use (being fetched, streamed to Nix) are pinned and left alone.
Eviction drops the least recently used first: what the gateway fetched for Nix is a
cache, kept while it fits under the cap."""

from __future__ import annotations

import logging
from typing import Any

import trio

from node.daemon.nodestore import NodeStore
from node.local.store import GcReport

log = logging.getLogger(__name__)

BATCH = 64  # paths dropped per turn of the write lock
EVICT_EVERY = 1.0  # seconds at least between looks at the store's size while chunks keep coming


class Collector:
    def __init__(self, store: NodeStore, max_size: int) -> None:
        self.store = store
        self.max_size = max_size

    async def gc(self, dry_run: bool = False) -> GcReport:
        """Drop every path no root reaches (and no one is using), in batches."""
        local = self.store.store
        if dry_run:
            async with self.store.write_lock:
                dead = await self.store.write(local.collectable, self.store.pinned())
                return await self.store.write(lambda: local.drop(dead, dry_run=True))
        removed: list[str] = []
        chunks = size = 0
        while True:
            async with self.store.write_lock:
                # Asked again each turn: roots, pins and paths change between batches.
                dead = await self.store.write(local.collectable, self.store.pinned())
                batch = dead[:BATCH]
                r = await self.store.write(local.drop, batch)
            removed += r.removed_paths
            chunks += r.freed_chunks
            size += r.freed_bytes
            if len(dead) <= BATCH:
                return GcReport(tuple(sorted(removed)), chunks, size, False)

    async def size(self) -> int:
        reader = self.store.reader
        return await self.store.read(
            reader.index.scalar, "SELECT sum(length) FROM chunks WHERE present = 1"
        )

    async def evict(self) -> GcReport | None:
        """Drop least recently used unneeded paths until the store fits its cap; None
        if it fits already."""
        if not self.max_size or await self.size() <= self.max_size:
            return None
        local = self.store.store
        removed: list[str] = []
        chunks = size = 0
        while (excess := await self.size() - self.max_size) > 0:
            async with self.store.write_lock:
                dead = await self.store.write(local.collectable, self.store.pinned())
                used = self.store.used
                # collectable() lists by when each path was added; a use since counts.
                order = sorted(range(len(dead)), key=lambda i: (used.get(dead[i], 0.0), i))
                sizes = await self.store.read(self._sizes, [dead[i] for i in order[:BATCH]])
                # The least recently used, as many as free the excess (a path's NAR size
                # stands for the bytes it frees; shared chunks make that an overestimate,
                # and the next turn drops more).
                batch: list[str] = []
                for i in order[:BATCH]:
                    batch.append(dead[i])
                    excess -= sizes.get(dead[i], 0)
                    if excess <= 0:
                        break
                if not batch:
                    break
                r = await self.store.write(local.drop, batch)
            removed += r.removed_paths
            chunks += r.freed_chunks
            size += r.freed_bytes
            for p in r.removed_paths:
                self.store.used.pop(p, None)
        now = await self.size()
        if now > self.max_size:
            log.warning(
                "the store holds %s bytes, over max_store_size (%s), but every path in it is "
                "a GC root, needed by one, or in use: `ferry root list` shows the roots",
                f"{now:,}",
                f"{self.max_size:,}",
            )
        if removed:
            log.info(
                "evicted %d paths (%s bytes) to stay under max_store_size",
                len(removed),
                f"{size:,}",
            )
        return GcReport(tuple(sorted(removed)), chunks, size, False)

    def _sizes(self, paths: list[str]) -> dict[str, int]:
        index = self.store.reader.index
        return {p: row.nar_size for p in paths if (row := index.path(p)) is not None}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Evict whenever chunks were added (at most every EVICT_EVERY seconds)."""
        task_status.started()
        # Even without a cap: a reload may set one (evict() does nothing while it is 0).
        while True:
            changed = self.store.chunks_changed()
            try:
                await self.evict()
            except Exception:
                # A store error here must not stop the node: the next turn tries again.
                log.exception("eviction failed")
            await changed.wait()
            await trio.sleep(EVICT_EVERY)
