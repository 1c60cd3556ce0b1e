"""A node's store in memory, the double of the real one (node.daemon.session.FetchStore
over node.local): what a fetch session reads and writes (`LocalPaths`) and what the
block and claim servers answer from (`BlobSource`, `ClaimBook`), with the node's own
rules: only chunks that hash right are kept, base selection is the node's
(`node.exchange.bases`), claims are kept once each.

Nothing here touches a disk or a thread, so the simulator runs many nodes in one
process, and a test sets up a store in a few lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from node.exchange.bases import chunk_bases, package_name, pick_base
from node.exchange.fetch import Plan
from node.exchange.packing import Packer, RunHints
from node.exchange.server import Kept
from node.exchange.subscriptions import Subscriptions
from p2p.blocks import Reply
from store.chunking import digest as blake3_digest
from store.manifest import Manifest
from store.path import StorePath
from trust.claim import SignedClaim


@dataclass
class StoreCounters:
    stored_chunks: int = 0
    stored_bytes: int = 0
    rejected_chunks: int = 0  # handed to store_blocks but not what their digest says


@dataclass
class MemoryStore:
    diff_level: int = 3
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    manifests: dict[StorePath, Manifest] = field(default_factory=dict)
    _claims: dict[str, dict[bytes, SignedClaim]] = field(default_factory=dict)
    _manifest_blobs: dict[bytes, bytes] = field(default_factory=dict)
    subscriptions: Subscriptions = field(default_factory=Subscriptions)
    # One copy of each chunk's bytes shared by many stores (which chunks a store holds is
    # still its own): a simulation's thousand nodes of one closure fit in memory.
    interned: dict[bytes, bytes] | None = None
    counters: StoreCounters = field(default_factory=StoreCounters)
    packer: Packer | None = None  # a server's, with its cache and packs (None: one per reply)

    # --- filling it

    def add_path(
        self, manifest: Manifest, chunks: dict[bytes, bytes], claims: Sequence[SignedClaim] = ()
    ) -> None:
        """A path as a builder publishes it: manifest, every chunk, its claims."""
        for d, data in chunks.items():
            if blake3_digest(data) != d:
                raise ValueError(f"chunk {d.hex()[:16]} does not hash to its digest")
        self.chunks.update(chunks)
        self._record(manifest)
        self._learn(claims)

    def _record(self, manifest: Manifest) -> None:
        self.manifests[manifest.store_path] = manifest
        blob = manifest.encode()
        self._manifest_blobs[blake3_digest(blob)] = blob

    def complete(self, sp: StorePath) -> bool:
        m = self.manifests.get(sp)
        return m is not None and all(d in self.chunks for d in m.chunk_digests())

    def _learn(self, claims: Sequence[SignedClaim]) -> int:
        new = 0
        for c in claims:
            book = self._claims.setdefault(c.claim.store_path.hash_part, {})
            key = c.encode()
            if key not in book:
                book[key] = c
                new += 1
        return new

    # --- LocalPaths (a fetch session)

    async def state(self, store_path: StorePath) -> tuple[Manifest, bool] | None:
        m = self.manifests.get(store_path)
        return None if m is None else (m, self.complete(store_path))

    async def claims(self, hash_part: str) -> list[SignedClaim]:
        return list(self._claims.get(hash_part, {}).values())

    async def states(self, sps: Sequence[StorePath]) -> list[tuple[Manifest, bool] | None]:
        return [await self.state(sp) for sp in sps]

    async def claims_many(self, hash_parts: Sequence[str]) -> list[list[SignedClaim]]:
        return [await self.claims(h) for h in hash_parts]

    async def learn(self, claims: list[SignedClaim], source: str) -> int:
        return self._learn(claims)

    async def keep(self, claims: list[SignedClaim], source: str) -> Kept:
        return Kept(self._learn(claims), 0)

    async def reserve(self, plans: Sequence[Plan], roots: set[str]) -> dict[bytes, int]:
        for p in plans:
            self._record(p.manifest)
        return {
            d: n for p in plans for _, _, n, d in p.manifest.chunk_spans() if d not in self.chunks
        }

    async def store_blocks(self, blocks: list[tuple[bytes, bytes]]) -> None:
        for d, data in blocks:
            # The session checks every block; this is the store's own guard, counted so a
            # simulation can show that nothing unverified ever lands.
            if blake3_digest(data) != d:
                self.counters.rejected_chunks += 1
                continue
            if d not in self.chunks:
                self.chunks[d] = (
                    data if self.interned is None else self.interned.setdefault(d, data)
                )
                self.counters.stored_chunks += 1
                self.counters.stored_bytes += len(data)
        self.subscriptions.stored(d for d, _ in blocks if d in self.chunks)

    async def bases(self, plans: Sequence[Plan]) -> dict[bytes, tuple[bytes, ...]]:
        out: dict[bytes, tuple[bytes, ...]] = {}
        for plan in plans:
            m = await self.base_manifest(plan.store_path)
            if m is not None:
                out.update(
                    chunk_bases(
                        plan.manifest, m, {d for d in m.chunk_digests() if d in self.chunks}
                    )
                )
        return out

    async def base_manifest(self, store_path: StorePath) -> Manifest | None:
        name = package_name(store_path)
        base = pick_base(
            store_path, [p for p in self.manifests if package_name(p) == name and self.complete(p)]
        )
        return None if base is None else self.manifests[base]

    async def read_chunks(self, digests: list[bytes]) -> dict[bytes, bytes]:
        return {d: self.chunks[d] for d in digests if d in self.chunks}

    async def save(self) -> None:
        pass

    # --- BlobSource and ClaimBook (serving peers)

    async def blobs(self, digests: list[bytes]) -> dict[bytes, bytes]:
        return {
            d: b
            for d in digests
            if (b := self.chunks.get(d) or self._manifest_blobs.get(d)) is not None
        }

    async def encode_reply(self, replies: list[Reply], hints: RunHints) -> bytes:
        return (self.packer or Packer(diff_level=self.diff_level)).encode(replies, hints)

    async def present(self, digests: list[bytes]) -> set[bytes]:
        return {d for d in digests if d in self.chunks}

    async def sizes(self, digests: list[bytes]) -> dict[bytes, int]:
        return {
            d: len(b)
            for d in digests
            if (b := self.chunks.get(d) or self._manifest_blobs.get(d)) is not None
        }

    async def claims_for(self, path_hash: str) -> list[SignedClaim]:
        return list(self._claims.get(path_hash, {}).values())

    async def claims_for_many(self, path_hashes: Sequence[str]) -> list[list[SignedClaim]]:
        return [await self.claims_for(h) for h in path_hashes]
