"""NarHash (sha256 of the whole NAR) computed beside other work.

SHA-256 is sequential and is the slowest step of building a manifest, so it runs on a
worker thread (hashlib releases the GIL) while the caller reads and BLAKE3-hashes
chunks. Order is kept by a single worker; memory by a bound on blocks in flight.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from store.hash import Hash

_SMALL = 64 * 1024  # pieces below this are batched before crossing threads
_BATCH = 1 << 20
_IN_FLIGHT = 16
# A NAR is hashed on the caller's thread until it reaches this size: most store paths are
# small, and starting a thread for each cost publishing a store a tenth of its time.
_INLINE = 1 << 20


class NarHasher:
    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None  # started once the NAR is not small
        self._pending: deque[Future[None]] = deque()
        self._small = bytearray()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        """Add the next NAR bytes; `data` must not change afterwards."""
        n = len(data)
        if not n:
            return
        self.size += n
        if n < _SMALL:
            self._small += data
            if len(self._small) >= _BATCH:
                self._flush_small()
            return
        self._flush_small()
        self._submit(data)

    def hash(self) -> Hash:
        self._flush_small()
        while self._pending:
            self._pending.popleft().result()
        return Hash.sha256(self._sha.digest())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> NarHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush_small(self) -> None:
        if self._small:
            self._submit(bytes(self._small))
            self._small = bytearray()

    def _submit(self, data: bytes | memoryview) -> None:
        if self._pool is None:
            if self.size <= _INLINE:
                self._sha.update(data)  # in order: nothing was handed to a thread yet
                return
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="narhash")
        self._pending.append(self._pool.submit(self._sha.update, data))
        while len(self._pending) > _IN_FLIGHT:
            self._pending.popleft().result()
