"""The local store as a running node's parts share it.

Two SQLite connections: the store's own, for writes, used by one writer at a time
(`write_lock`: a publish holds it throughout; fetch sessions only to reserve their
paths and to fill holes, so they run side by side), and a reader that serves peers,
the control API and the fetchers' reads, so a long write never stalls them. Each
connection is used from one worker thread at a time (its limiter)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import trio

from node.daemon.summaries import Summaries
from node.exchange.limits import PeerLimits
from node.exchange.packing import Packer, RunHints
from node.exchange.server import Kept
from node.exchange.subscriptions import Subscriptions
from node.local.publish import Publication, publish
from node.local.store import LocalStore, StoreReader
from p2p.blocks import Block, Reply
from store.manifest import Manifest
from store.source import Source
from trust.claim import SignedClaim
from trust.key import SecretKey

log = logging.getLogger(__name__)

T = TypeVar("T")
INLINE_REPLY = 64 << 10  # block bytes of a reply compressed on the event loop, at most
INLINE_BLOBS, INLINE_READ = 4, 64 << 10  # chunks, and their bytes, read on the event loop


class NodeStore:
    def __init__(self, store: LocalStore, diff_level: int) -> None:
        self.store = store
        self.reader: StoreReader = store.reader()
        self.write_lock = trio.Lock()  # one writer of the store's connection and allocation mark
        self._writer = trio.CapacityLimiter(1)
        self._readers = trio.CapacityLimiter(1)
        self.subscriptions = Subscriptions()  # peers' want-haves of chunks not here yet
        self.diff_level = diff_level
        self.packer = Packer(diff_level=diff_level)  # its cache serves every stream
        self.on_published: Callable[[Manifest], None] | None = None  # each signed publication
        # Compressing is CPU work: more at once than there are cores is only slower, and
        # each holds a reply's blocks several times over (input, output, frame) meanwhile.
        self._packing = trio.CapacityLimiter(os.cpu_count() or 1)
        # The policy's keys (encoded): their claims are kept and answered first; claims by
        # other keys only within a budget a path (see LocalStore.add_claims). Without a
        # policy every key is another's.
        self.trusted: frozenset[str] = frozenset()
        self.others_per_path = PeerLimits().unknown_claims_per_path
        self._added = trio.Event()
        # The paths we have claims for, and our peers': misses are answered from memory.
        self.summaries = Summaries(self.reader.claimed_hashes())
        # Paths in use (being fetched, streamed to Nix): GC and eviction leave them.
        self._pins: Counter[str] = Counter()
        # When each path was last used, for eviction (least recently used first); a
        # path not used since the node started counts from when it was added.
        self.used: dict[str, float] = {}

    @property
    def data_dir(self) -> str:
        return self.store.data_dir

    def close(self) -> None:
        self.reader.close()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer's thread (the caller holds `write_lock`)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._writer)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the reader's thread; `fn` uses `self.reader`."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._readers)

    # --- what the block server asks (node.exchange.server.BlobSource)

    async def blobs(self, digests: list[bytes]) -> dict[bytes, bytes]:
        if len(digests) <= INLINE_BLOBS:
            # A few small chunks (what a lazy mount's reader waits on): an index lookup
            # and a read from the page cache take less than the trip to a thread. The
            # limiter keeps the reader's connection to one user at a time.
            async with self._readers:
                rows = self.reader.index.chunks(digests)
                if sum(r.length for r in rows.values()) <= INLINE_READ:
                    return self.reader.blobs(digests, rows)
        return await self.read(self.reader.blobs, digests)

    async def present(self, digests: list[bytes]) -> set[bytes]:
        def work() -> set[bytes]:
            return {d for d, r in self.reader.index.chunks(digests).items() if r.present}

        return await self.read(work)

    async def sizes(self, digests: list[bytes]) -> dict[bytes, int]:
        def work() -> dict[bytes, int]:
            return {d: r.length for d, r in self.reader.index.chunks(digests).items() if r.present}

        return await self.read(work)

    async def encode_reply(self, replies: list[Reply], hints: RunHints) -> bytes:
        if sum(len(r.data) for r in replies if isinstance(r, Block)) <= INLINE_REPLY:
            # Compressing a few KiB takes less than the trip to a thread, and a lazy
            # mount's reader waits on it.
            return self.packer.encode(replies, hints)
        return await trio.to_thread.run_sync(
            self.packer.encode, replies, hints, limiter=self._packing
        )

    def chunks_added(self) -> None:
        """Wake the servers' subscriptions (want-haves of chunks that were not here) and
        the gateway's NAR streams: the store commits in batches, so which chunks became
        servable is not known."""
        self.subscriptions.stored(None)
        self._added.set()
        self._added = trio.Event()

    def chunks_changed(self) -> trio.Event:
        """Set the next time chunks are added (take it before looking, or miss one)."""
        return self._added

    # --- paths in use

    def pin(self, paths: Iterable[str]) -> None:
        now = time.time()
        for p in paths:
            self._pins[p] += 1
            self.used[p] = now

    def unpin(self, paths: Iterable[str]) -> None:
        now = time.time()
        for p in paths:
            self.used[p] = now  # a download's use ends when it ends
            self._pins[p] -= 1
            if self._pins[p] <= 0:
                del self._pins[p]

    @contextmanager
    def using(self, paths: Sequence[str]) -> Iterator[None]:
        self.pin(paths)
        try:
            yield
        finally:
            self.unpin(paths)

    def pinned(self) -> set[str]:
        return set(self._pins)

    # --- publishing

    async def publish(self, src: Source, key: SecretKey | None, *, root: bool) -> Publication:
        """Build `src`'s manifest into the store (its chunks as they are cut), with a
        claim signed by `key`; a GC root unless `root` is false. Raises SourceError."""

        async with self.write_lock:
            pub = await self.write(partial(publish, self.store, src, key, root=root))
        self.chunks_added()
        if pub.signed:
            self.summaries.add([pub.manifest.store_path.hash_part])
            if self.on_published is not None:
                self.on_published(pub.manifest)
        return pub

    # --- claims (node.exchange.server.ClaimSource, and the fetchers)

    async def claims_for(self, path_hash: str) -> list[SignedClaim]:
        return self._trusted_first(await self.read(self.reader.claims_by_hash, path_hash))

    async def claims_for_many(self, path_hashes: Sequence[str]) -> list[list[SignedClaim]]:
        found = await self.read(self.reader.claims_by_hashes, path_hashes)
        return [self._trusted_first(f) for f in found]

    def _trusted_first(self, claims: list[SignedClaim]) -> list[SignedClaim]:
        # An answer holds at most claimwire.MAX_CLAIMS: those that count go in it first.
        return sorted(claims, key=lambda c: c.builder.encode() not in self.trusted)

    async def learn(self, found: list[SignedClaim], source: str) -> int:
        return (await self.keep(found, source)).new

    async def keep(self, found: list[SignedClaim], source: str) -> Kept:
        if not found:
            return Kept(0, 0)
        new, refused = await self.read(
            partial(
                self.reader.add_claims, trusted=self.trusted, others_per_path=self.others_per_path
            ),
            found,
        )
        if refused < len(found):  # not all junk: the store keeps claims for these paths
            self.summaries.add(c.claim.store_path.hash_part for c in found)
        if new:
            log.info("learned %d new claims from %s", new, source)
        if refused:
            log.info(
                "refused %d claims from %s: over the budget for keys outside the policy",
                refused,
                source,
            )
        return Kept(new, refused)
