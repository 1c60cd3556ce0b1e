"""Chunks of mounted paths by their place in the slabs."""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence

from ondemand.filler import ChunkAt
from store.manifest import Manifest


class SlabMap:
    """Where the chunks of mounted paths lie in the slabs, and which are present: what
    the ondemand backends need to turn a range of a slab into chunks to fetch."""

    def __init__(self) -> None:
        self.by_slab: dict[int, list[ChunkAt]] = {}  # slab id -> chunks sorted by offset
        self.files: dict[object, list[ChunkAt]] = {}
        self.inode_of_slab: dict[int, int] = {}  # st_ino -> slab id
        self.have: set[bytes] = set()

    def add(
        self, slab_of: dict[bytes, tuple[int, int]], manifest: Manifest, present: set[bytes]
    ) -> None:
        for e in manifest.entries:
            if not e.chunks:
                continue
            key = (str(manifest.store_path), e.path)
            out = []
            for i, ((_, length), d) in enumerate(zip(manifest.chunking.spans(e.size), e.chunks)):
                slab, offset = slab_of[d]
                at = ChunkAt(d, offset, length, key, i)
                out.append(at)
                row = self.by_slab.setdefault(slab, [])
                bisect.insort(row, at, key=lambda c: c.offset)
            self.files[key] = out
        self.have |= present

    def covering(self, fd: int, offset: int, count: int) -> list[ChunkAt] | None:
        """For the fanotify filler: the slab is the file the event's fd is open on (None
        if it is no slab of a mount here)."""
        slab = self.inode_of_slab.get(os.fstat(fd).st_ino)
        return self.covering_slab(slab, offset, count) if slab is not None else None

    def covering_slab(self, slab: int, offset: int, count: int) -> list[ChunkAt]:
        row = self.by_slab.get(slab, [])
        i = bisect.bisect_right(row, offset, key=lambda c: c.offset)
        i = max(0, i - 1)
        out = []
        while i < len(row) and row[i].offset < offset + count:
            if row[i].offset + row[i].length > offset:
                out.append(row[i])
            i += 1
        return out

    def file_chunks(self, file: object) -> Sequence[ChunkAt]:
        return self.files[file]

    def present(self, digest: bytes) -> bool:
        return digest in self.have

    def written(self, digests: Sequence[bytes]) -> None:
        self.have.update(digests)
