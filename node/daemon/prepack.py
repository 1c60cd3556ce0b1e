"""Packing published paths ahead, in the background (`node.local.packs`): one path at a
time, on one core, so serving and publishing keep the others."""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from node.daemon.nodestore import NodeStore
from node.exchange.packing import CACHE_FROM, run_key
from node.exchange.schedule import cold_runs
from p2p.blocks import Block
from store.manifest import Manifest

log = logging.getLogger(__name__)


class Prepacker:
    def __init__(self, store: NodeStore) -> None:
        self.store = store
        # Unbounded: a publication never waits for packing; what waits is a manifest each.
        self._send, self._receive = trio.open_memory_channel[Manifest](math.inf)
        self.waiting = 0  # paths published and not packed yet
        self._settled = trio.Event()  # set while nothing waits
        self._settled.set()
        self._one = trio.CapacityLimiter(1)

    @property
    def enabled(self) -> bool:
        packs = self.store.packer.packs
        return packs is not None and packs.cap > 0

    def submit(self, manifest: Manifest) -> None:
        if self.enabled:
            if not self.waiting:
                self._settled = trio.Event()
            self.waiting += 1
            self._send.send_nowait(manifest)

    async def settled(self) -> None:
        """Returns once every path submitted so far is packed (or given up on)."""
        await self._settled.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for manifest in self._receive:
            try:
                made = await self._pack(manifest)
                log.debug("packed %d runs of %s ahead", made, manifest.store_path)
            except OSError as e:
                # A full or failing disk: packs are a cache, serving goes on without them.
                log.warning("could not pack %s ahead: %s", manifest.store_path, e)
            finally:
                self.waiting -= 1
                if not self.waiting:
                    self._settled.set()

    async def _pack(self, manifest: Manifest) -> int:
        packer = self.store.packer
        assert packer.packs is not None
        made = 0
        for run in cold_runs(manifest):
            if len(run) < CACHE_FROM or run_key(run) in packer.packs:
                continue
            found = await self.store.blobs(run)
            if len(found) < len(run):
                return made  # dropped since it was published (GC, eviction)
            blocks = [Block(d, found[d]) for d in run]
            del found
            made += await trio.to_thread.run_sync(packer.pack_ahead, blocks, limiter=self._one)
        return made
