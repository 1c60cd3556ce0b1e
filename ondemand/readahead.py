"""How far past a read to fetch, per file: sequential reads grow a window, random reads
fetch only what they touch. Pure: fed the chunks each access needs, returns the chunks
to have present."""

from __future__ import annotations

from dataclasses import dataclass, field

START = 8  # chunks fetched past a first sequential read
CAP_CHUNKS = 128
CAP_BYTES = 32 << 20  # a window this big keeps a 1 MiB-chunk file streaming at ferry fetch's pace


@dataclass
class Readahead:
    _next: dict[object, int] = field(default_factory=dict)  # file -> chunk after its last read
    _window: dict[object, int] = field(default_factory=dict)

    def plan(self, file: object, first: int, last: int, chunks: int, chunk_size: int) -> range:
        """Chunks `first..last` of a file of `chunks` chunks are being read: the chunk
        indexes to have present, those plus the window ahead."""
        prev = self._next.get(file)
        window = self._window.get(file, 0)
        if prev is not None and first == last == prev - 1:
            pass  # another read inside the chunk read last: neither a hit nor a jump
        elif first == (0 if prev is None else prev) or (prev is not None and first == prev - 1):
            cap = max(1, min(CAP_CHUNKS, CAP_BYTES // chunk_size))
            window = min(cap, START if window == 0 else window * 2)
        else:
            window = 0
        self._window[file] = window
        self._next[file] = last + 1
        return range(first, min(chunks, last + 1 + window))
