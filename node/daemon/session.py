"""Fetch sessions: where a Fetch keeps what it gets, and the one place sessions are made.

FetchSessions owns what every session needs and nobody may forget: the write lock, the
settings taken from the node's configuration, closing the store session, and counting
its traffic in the peer book and the metrics."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from node.daemon.config import NodeConfig
from node.daemon.nodestore import NodeStore
from node.exchange.bases import chunk_bases, package_name, rank_bases
from node.exchange.download import NewSchedule
from node.exchange.fetch import Fetch, FetchSettings, NoPolicy, Plan
from node.exchange.lazy import Links
from node.exchange.network import Network
from node.exchange.peers import PeerBook
from node.exchange.progress import Progress
from node.gateway.metrics import Metrics
from store.manifest import Manifest
from store.path import StorePath
from trust.claim import SignedClaim
from trust.policy import QuorumPolicy

log = logging.getLogger(__name__)


FILL_BYTES = 8 << 20  # fetched bytes gathered before they go to their holes (one sync)
FILL_DELAY = 0.2  # seconds a fetched chunk may wait for company before it goes anyway
BASE_CANDIDATES = 16  # nearest same-package paths checked for completeness, for a diff base


class FetchStore:
    """The store as one fetch session sees it. Sessions run side by side: each takes the
    write lock only to reserve its paths and to fill their holes, never across the
    network part (Nix downloads NARs in parallel)."""

    def __init__(self, store: NodeStore, fill_bytes: int = FILL_BYTES) -> None:
        self.store = store
        self.fill_bytes = fill_bytes
        self._blocks: list[tuple[bytes, bytes]] = []  # fetched, not in the store yet
        self._block_bytes = 0
        self._since = 0.0  # when the oldest of `_blocks` arrived
        self._pinned: list[str] = []  # the session's paths: GC leaves them while it runs

    async def state(self, sp: StorePath) -> tuple[Manifest, bool] | None:
        return await self.store.read(self.store.reader.path_state, str(sp))

    async def states(self, sps: Sequence[StorePath]) -> list[tuple[Manifest, bool] | None]:
        reader = self.store.reader
        return await self.store.read(lambda: [reader.path_state(str(sp)) for sp in sps])

    async def claims(self, hash_part: str) -> list[SignedClaim]:
        return await self.store.claims_for(hash_part)

    async def claims_many(self, hash_parts: Sequence[str]) -> list[list[SignedClaim]]:
        return await self.store.claims_for_many(hash_parts)

    async def learn(self, found: list[SignedClaim], source: str) -> int:
        return await self.store.learn(found, source)

    async def reserve(self, plans: Sequence[Plan], roots: set[str]) -> dict[bytes, int]:
        local = self.store.store

        def work() -> dict[bytes, int]:
            missing: dict[bytes, int] = {}
            # One commit (one sync) for a closure's thousands of small paths.
            with local.index.transaction():
                for p in plans:
                    sizes = {d: n for _, _, n, d in p.manifest.chunk_spans()}
                    absent = local.reserve(
                        p.manifest, claims=p.verdict.claims, root=str(p.store_path) in roots
                    )
                    missing.update((d, sizes[d]) for d in absent)
            return missing

        async with self.store.write_lock:
            paths = [str(p.store_path) for p in plans]
            self.store.pin(paths)
            self._pinned += paths
            return await self.store.write(work)

    async def bases(self, plans: Sequence[Plan]) -> dict[bytes, tuple[bytes, ...]]:
        reader = self.store.reader

        def work() -> dict[bytes, tuple[bytes, ...]]:
            out: dict[bytes, tuple[bytes, ...]] = {}
            for plan in plans:
                base = self._base(plan.store_path)
                if base is not None:
                    rows = reader.index.chunks(list(set(base.chunk_digests())))
                    out.update(
                        chunk_bases(plan.manifest, base, {d for d, r in rows.items() if r.present})
                    )
            return out

        return await self.store.read(work)

    async def base_manifest(self, store_path: StorePath) -> Manifest | None:
        return await self.store.read(self._base, store_path)

    def _base(self, sp: StorePath) -> Manifest | None:
        """The manifest of the closest complete version of `sp`'s package (on a worker
        thread). Only paths whose names start like it are read (a store holds thousands,
        and a closure asks for each of its paths); completeness only for the same
        package. A path being fetched is incomplete, so never a base."""
        reader = self.store.reader
        candidates = reader.index.store_paths_named(sp.store_dir, package_name(sp))
        # Completeness is a query each: asked nearest first, and of a few only.
        for p in rank_bases(sp, candidates)[:BASE_CANDIDATES]:
            if not reader.index.missing_chunks(p):
                state = reader.path_state(p)
                return state[0] if state is not None else None
        return None

    async def read_chunks(self, digests: list[bytes]) -> dict[bytes, bytes]:
        return await self.store.blobs(digests)

    async def store_blocks(self, found: list[tuple[bytes, bytes]]) -> None:
        if not self._blocks:
            self._since = trio.current_time()
        self._blocks.extend(found)
        self._block_bytes += sum(len(b) for _, b in found)
        if self._block_bytes >= self.fill_bytes or trio.current_time() - self._since >= FILL_DELAY:
            await self.save()

    async def save(self) -> None:
        """Put the fetched chunks in their holes (durably): servable, and kept if the
        session stops."""
        if not self._blocks:
            return
        blocks, self._blocks, self._block_bytes = self._blocks, [], 0
        async with self.store.write_lock:
            await self.store.write(self.store.store.fill, blocks)
        self.store.chunks_added()

    def close(self) -> None:
        self._blocks, self._block_bytes = [], 0
        self.store.unpin(self._pinned)
        self._pinned = []


class FetchSessions:
    def __init__(
        self,
        net: Network,
        store: NodeStore,
        policy: QuorumPolicy | None,
        config: NodeConfig,
        book: PeerBook,
        metrics: Metrics,
        ready: trio.Event,
    ) -> None:
        self.net = net
        # Set once the node has tried its bootstrap peers: a session opened before (a
        # fetch at start-up, a lazy read a restarted node takes over) waits for it rather
        # than finding nobody to ask.
        self.ready = ready
        self.store = store
        self.policy = policy
        # Keys a proof of equivocation convicts (node.daemon.witness): they count for nothing.
        self.caught: Callable[[], frozenset[bytes]] = frozenset
        # Claims their builders revoked (trust.revocation): they count for nothing.
        self.withdrawn: Callable[[], frozenset[tuple[bytes, bytes]]] = frozenset
        # The logs each claim was shown in (node.daemon.logbook), and how to ask peers for
        # more: a policy with require_logs, or a key pinned to a log, needs them.
        self.logs: Mapping[bytes, frozenset[bytes]] = {}
        self.prove: Callable[[list[SignedClaim], list[str]], Awaitable[int]] | None = None
        self.config = config
        self.book = book
        self.metrics = metrics

    def settings(self, **overrides: Any) -> FetchSettings:
        return FetchSettings(
            **{
                "request_timeout": self.config.request_timeout,
                "claims_timeout": self.config.claims_timeout,
                "diffs": self.config.diffs,
                **overrides,
            }
        )

    def _policy(self) -> QuorumPolicy:
        if self.policy is None:
            raise NoPolicy(
                "this node has no trust policy, so it cannot accept paths: "
                "start it with --policy FILE (see `ferry trust --help`)"
            )
        caught, withdrawn = self.caught(), self.withdrawn()
        if not (caught or withdrawn or self.policy.wants_any_logs):
            return self.policy  # every narinfo asks: no copy when there is nothing to add
        return dataclasses.replace(self.policy, caught=caught, withdrawn=withdrawn, logs=self.logs)

    @asynccontextmanager
    async def recording(
        self,
        on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
        schedule: NewSchedule | None = None,
        fill_bytes: int = FILL_BYTES,
        **overrides: Any,
    ) -> AsyncIterator[tuple[Fetch, FetchStore]]:
        """A session that records what it fetches in the store (beside other sessions),
        and closes and accounts for itself however it ends. `fill_bytes`: how much it
        gathers before writing (less: readers of the store see chunks sooner)."""
        policy = self._policy()
        await self.ready.wait()
        await self.store.summaries.settle()
        local = FetchStore(self.store, fill_bytes)
        fetch = Fetch(self.net, local, policy, self.settings(**overrides), on_progress, schedule)
        fetch.prove = self.prove
        try:
            yield fetch, local
        finally:
            local.close()
            self.account(fetch)

    def planning(self, **overrides: Any) -> Fetch:
        """A session that only resolves (reads the store, takes no lock): the gateway's
        narinfo answers. Complete its plans with `recording`."""
        fetch = Fetch(self.net, FetchStore(self.store), self._policy(), self.settings(**overrides))
        fetch.prove = self.prove
        return fetch

    async def transfer(
        self, links: Links, digests: list[bytes], *, ahead: bool = False
    ) -> dict[bytes, bytes]:
        """Fetch these chunks into memory (not the store), verified, over `links` (the
        lazy mounts' streams); those no peer gave are missing from the result (and
        logged). `ahead`: readahead. NoPolicy without a trust policy."""
        self._policy()  # chunks only of paths the policy let in: none without one
        await self.ready.wait()
        progress = Progress()
        try:
            got = await links.get(digests, progress, ahead=ahead)
        finally:
            self._account(progress)
        if len(got) < len(digests):
            log.warning(
                "ondemand fetch: no peer gave %d of %d chunks",
                len(digests) - len(got),
                len(digests),
            )
        return got

    def account(self, fetch: Fetch) -> None:
        """Count a finished (or failed) session's traffic in the peer book and metrics."""
        self._account(fetch.progress)

    def _account(self, p: Progress) -> None:
        for peer, n in p.per_peer.items():
            self.book.get(peer).received_bytes += n
        m = self.metrics
        m.fetched_bytes.inc(p.bytes_done)
        m.fetched_chunks.inc(p.chunks_done)
        m.deduplicated_chunks.inc(p.deduplicated_chunks)
        m.deduplicated_bytes.inc(p.deduplicated_bytes)
        m.received_bytes.inc(p.received_bytes)
        m.diff_logical_bytes.inc(p.diff_logical_bytes)
        m.diff_received_bytes.inc(p.diff_received_bytes)
