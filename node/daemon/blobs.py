"""The blobs EROFS asks the cachefiles ondemand backend for, served from the store: a
mount's metadata image (cookie: its fsid) and the slabs (cookie: the slab's file name,
which is the device tag in every image). Chunks a READ needs that the store lacks are
fetched, written to the slab (unmarked in this mode), synced, recorded, then read back."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import trio

from node.daemon.slabmap import SlabMap
from ondemand.syscalls import pwrite_all

log = logging.getLogger(__name__)

Fetch = Callable[[list[bytes]], Awaitable[dict[bytes, bytes]]]
Filled = Callable[[list[bytes]], Awaitable[None]]


class StoreBlobs:
    def __init__(
        self,
        domain: str,
        slab_dir: str,
        slabs: SlabMap,
        slab_ids: dict[str, int],
        fetch: Fetch,
        filled: Filled,
    ) -> None:
        self.volume = f"erofs,{domain}".encode()
        self.slab_dir = slab_dir
        self.slabs = slabs
        self.slab_ids = slab_ids  # slab file name -> slab id
        self.images: dict[bytes, str] = {}  # fsid -> image file
        self.fetch = fetch
        self.filled = filled

    def _file(self, volume: bytes, cookie: bytes) -> tuple[str, int | None] | None:
        if volume != self.volume:
            return None
        if cookie in self.images:
            return self.images[cookie], None
        name = cookie.decode("utf-8", "replace")
        if name in self.slab_ids:
            return os.path.join(self.slab_dir, name), self.slab_ids[name]
        return None

    def size(self, volume: bytes, cookie: bytes) -> int | None:
        found = self._file(volume, cookie)
        if found is None:
            return None
        try:
            return os.stat(found[0]).st_size
        except OSError:
            return None

    async def read(self, volume: bytes, cookie: bytes, off: int, n: int) -> bytes | None:
        found = self._file(volume, cookie)
        if found is None:
            return None
        path, slab = found
        if slab is not None:
            need = [
                c
                for c in self.slabs.covering_slab(slab, off, n)
                if not self.slabs.present(c.digest)
            ]
            if need:
                got = await self.fetch([c.digest for c in need])
                done = [c for c in need if c.digest in got]
                if done:
                    await trio.to_thread.run_sync(
                        _write, path, [(c.offset, got[c.digest]) for c in done]
                    )
                    await self.filled([c.digest for c in done])
                if len(done) < len(need):
                    log.warning(
                        "cachefiles: %d chunks of %s are not available",
                        len(need) - len(done),
                        cookie,
                    )
                    return None
        return await trio.to_thread.run_sync(_read, path, off, n)


def _write(path: str, pieces: list[tuple[int, bytes]]) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in pieces:
            pwrite_all(fd, data, offset)
        os.fdatasync(fd)  # on disk before the store says present
    finally:
        os.close(fd)


def _read(path: str, off: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)
