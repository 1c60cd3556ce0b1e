"""The local store: each unique chunk once, in slabs, found through the index.

Crash safety comes from ordering, never from luck:
- ingest writes chunk bytes into slab space past the committed watermark, syncs the
  slab, and only then commits the batch's rows (and the new watermark) in one
  transaction; a path row is committed after all its chunks. A crash leaves debris
  past the watermark, which opening the store cuts off, and committed-but-unused
  chunks, which a re-run reuses and GC frees;
- freeing (GC, or undoing a failed ingest) first commits "these rows are gone, these
  extents are to be punched" in one transaction, then punches the holes; opening the
  store finishes any punching a crash interrupted.
`checkpoint(name)` is called at each step that matters for this; tests use it to
kill the process at chosen points.
"""

from __future__ import annotations

import builtins
import errno
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from node.local.errors import PathIncomplete, PathNotInStore, StoreError, StoreFull
from node.local.index import ChunkRow, Index
from node.local.lock import StoreLock
from node.local.slab import BLOCK, DEFAULT_CAP, Slab, align
from store.chunking import digest as blake3_digest
from store.export import ChunkCorrupt, ChunkMissing
from store.manifest import Manifest, ManifestError
from store.path import StorePath
from trust.claim import SignedClaim

Checkpoint = Callable[[str], None]
DEFAULT_BATCH = 64 << 20  # bytes of chunk data per index transaction
_FREE_BATCH = 4096  # extents forgotten per transaction while punching
_ZEROS = memoryview(bytes(BLOCK))


def no_checkpoint(name: str) -> None:
    pass


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e)


@dataclass(frozen=True, slots=True)
class StoreStats:
    paths: int
    complete_paths: int
    roots: int
    nar_bytes: int  # sum of NarSize: what the NARs would take
    chunk_bytes: int  # chunk bytes summed path by path (shared chunks counted per path)
    unique_chunks: int
    unique_bytes: int  # bytes of distinct chunks held
    slab_disk_bytes: int  # blocks the slabs really occupy
    index_bytes: int

    @property
    def dedup_ratio(self) -> float:
        return self.chunk_bytes / self.unique_bytes if self.unique_bytes else 1.0


@dataclass(frozen=True, slots=True)
class GcReport:
    removed_paths: tuple[str, ...]
    freed_chunks: int
    freed_bytes: int
    dry_run: bool


@dataclass(slots=True)
class VerifyReport:
    chunks: int = 0
    bytes: int = 0
    corrupt: list[tuple[builtins.bytes, str]] = field(default_factory=list)
    bad_paths: list[tuple[str, str]] = field(default_factory=list)  # (store path, what is wrong)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.bad_paths


class LocalStore:
    def __init__(
        self,
        data_dir: str,
        *,
        slab_cap: int = DEFAULT_CAP,
        batch_bytes: int = DEFAULT_BATCH,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.slab_cap = slab_cap
        self.batch_bytes = batch_bytes
        self.checkpoint = checkpoint
        try:
            os.makedirs(os.path.join(self.data_dir, "slabs"), exist_ok=True)
        except PermissionError:
            raise StoreError(
                f"{self.data_dir}: permission denied (choose another --data-dir)"
            ) from None
        self._lock = StoreLock(self.data_dir)
        self._slabs: dict[int, Slab] = {}
        try:
            self.index = Index(os.path.join(self.data_dir, "index.sqlite"))
            self._recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for s in self._slabs.values():
            s.close()
        self._slabs.clear()
        if hasattr(self, "index"):
            self.index.close()
        self._lock.release()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- slabs

    def slab(self, slab_id: int) -> Slab:
        s = self._slabs.get(slab_id)
        if s is None:
            name = next(r.name for r in self.index.slabs() if r.id == slab_id)
            s = self._slabs[slab_id] = Slab(os.path.join(self.data_dir, "slabs", name))
        return s

    def _recover(self) -> None:
        for row in self.index.slabs():
            slab = self.slab(row.id)
            if slab.size() > row.size:
                # Written by an ingest that died before committing: no row points there.
                slab.truncate(row.size)
        self._punch_freed()

    def _punch_freed(self) -> None:
        pending = self.index.freed()
        done: list[tuple[int, int]] = []
        for slab_id, offset, length in pending:
            self.slab(slab_id).punch(offset, align(length))
            done.append((slab_id, offset))
            self.checkpoint("hole-punched")
            if len(done) >= _FREE_BATCH:
                with self.index.transaction():
                    self.index.forget_freed(done)
                done = []
        if done:
            with self.index.transaction():
                self.index.forget_freed(done)

    def _free(self, where: str, args: tuple[object, ...] = ()) -> tuple[int, int]:
        """Inside a transaction: drop the chunk rows matching `where` and queue their
        extents for punching. Returns (chunks, bytes on disk freed)."""
        db = self.index.db
        n, size = db.execute(
            f"SELECT count(*), coalesce(sum((length + 4095) / 4096 * 4096 * present), 0) FROM chunks WHERE {where}",
            args,
        ).fetchone()
        db.execute(
            f"INSERT OR REPLACE INTO freed SELECT slab, offset, length FROM chunks WHERE {where}",
            args,
        )
        db.execute(f"DELETE FROM chunks WHERE {where}", args)
        return n, size

    # --- reading

    def read_chunk(self, digest: bytes, verify: bool = True) -> bytes:
        row = self.index.chunks([digest]).get(digest)
        if row is None or not row.present:
            raise ChunkMissing(digest)
        try:
            data = self.slab(row.slab).read(row.offset, row.length)
        except OSError as e:
            raise ChunkCorrupt(digest, str(e)) from None
        if verify and blake3_digest(data) != digest:
            raise ChunkCorrupt(digest, "its bytes do not hash to its digest")
        return data

    def manifest(self, store_path: StorePath | str) -> Manifest:
        row = self.index.path(str(store_path))
        if row is None:
            raise PathNotInStore(str(store_path))
        data = self.index.manifest(row.manifest_digest)
        assert data is not None  # a foreign key guarantees it
        return Manifest.decode(data)

    def complete_manifest(self, store_path: StorePath | str) -> Manifest:
        return _complete_manifest(self.index, self.manifest(store_path), store_path)

    def claims(self, store_path: StorePath | str) -> list[SignedClaim]:
        return [SignedClaim.decode(d) for d in self.index.claims(str(store_path))]

    # --- writing

    def ingest(self) -> Ingest:
        return Ingest(self)

    def reserve(
        self, manifest: Manifest, *, claims: Iterable[SignedClaim] = (), root: bool = True
    ) -> list[bytes]:
        """Record a path before its bytes arrive (a fetch): the manifest, the claims, and a
        place (a hole) for every chunk the store lacks. Returns the digests still absent;
        an `Ingest` fills them. The path is complete once none is absent. Must not run
        while an `Ingest` is open: both move the slab's allocation mark."""
        sizes = {d: length for _, _, length, d in manifest.chunk_spans()}
        known = self.index.chunks(list(sizes))
        new = [d for d in sizes if d not in known]
        slabs = self.index.slabs()
        with self.index.transaction():
            if not slabs:
                self.index.add_slab(_slab_name(1), self.slab_cap)
                slabs = self.index.slabs()
            slab = slabs[-1]
            slab_id, cap, cursor = slab.id, slab.cap, slab.size
            rows: list[tuple[bytes, int, int, int]] = []
            for d in new:
                if cursor + align(sizes[d]) > cap:
                    self.index.add_chunks(rows, present=False)
                    self.index.set_slab_size(slab_id, cursor)
                    rows = []
                    slab_id = self.index.add_slab(
                        _slab_name(len(self.index.slabs()) + 1), self.slab_cap
                    )
                    cap, cursor = self.slab_cap, 0
                rows.append((d, slab_id, cursor, sizes[d]))
                cursor += align(sizes[d])
            self.index.add_chunks(rows, present=False)
            self.index.set_slab_size(slab_id, cursor)
            _record_path(self.index, manifest, claims, root)
        return [d for d in sizes if not (d in known and known[d].present)]

    def fill(self, blocks: Sequence[tuple[bytes, bytes | memoryview]]) -> int:
        """Write fetched chunks into the holes `reserve` made for them, sync, then mark
        them present in one transaction (present means on disk). Chunks already present
        or never reserved are skipped. Moves no allocation mark, so fetch sessions that
        fill may take turns with each other's reserves; not beside an `Ingest` (the
        caller's write lock). Returns the bytes written."""
        rows = self.index.chunks([d for d, _ in blocks])
        filled: dict[int, int] = {}  # row id -> slab
        written = 0
        for d, data in blocks:
            row = rows.get(d)
            if row is None or row.present or row.id in filled:
                continue
            if len(data) != row.length:
                raise StoreError(
                    f"chunk {d.hex()[:16]} is {len(data)} bytes, its reserved place "
                    f"{row.length}: run `ferry verify`"
                )
            filled[row.id] = row.slab
            written += len(data)
            try:
                self.slab(row.slab).write(row.offset, data)
            except OSError as e:
                if is_disk_full(e):
                    raise StoreFull(self.data_dir, str(e)) from e
                raise
        if not filled:
            return 0
        for slab_id in sorted(set(filled.values())):
            self.slab(slab_id).sync()
        self.checkpoint("fill-synced")
        with self.index.transaction():
            self.index.set_present(filled, True)
        self.checkpoint("fill-committed")
        return written

    def reader(self) -> StoreReader:
        return StoreReader(self)

    def add_root(self, store_path: StorePath | str) -> None:
        """PathNotInStore for a path the store does not hold (a typo must not pass)."""
        if self.index.path(str(store_path)) is None:
            raise PathNotInStore(str(store_path))
        with self.index.transaction():
            self.index.add_root(str(store_path))

    def remove_root(self, store_path: StorePath | str) -> bool:
        with self.index.transaction():
            return self.index.remove_root(str(store_path))

    def remove_path(self, store_path: StorePath | str) -> None:
        """Forget a path (its chunks stay until GC finds them unused)."""
        with self.index.transaction():
            if not self.index.db.execute(
                "DELETE FROM paths WHERE store_path = ?", (str(store_path),)
            ).rowcount:
                raise PathNotInStore(str(store_path))

    # --- GC

    def gc(self, dry_run: bool = False) -> GcReport:
        """Drop paths not reachable from the roots through references, then every chunk
        no remaining path uses (including debris from interrupted ingests)."""
        return self.drop(self.collectable(), dry_run=dry_run)

    def collectable(self, keep: Collection[str] = ()) -> list[str]:
        """Paths no root (nor a path in `keep`) reaches through references, least
        recently added first."""
        refs = self.index.refs()
        rows = self.index.paths()
        paths = {p.store_path for p in rows}
        live: set[str] = set()
        todo = [r for r in (*self.index.roots(), *keep) if r in paths]
        while todo:
            p = todo.pop()
            if p not in live:
                live.add(p)
                todo.extend(r for r in refs.get(p, ()) if r in paths and r not in live)
        return [
            p.store_path
            for p in sorted(rows, key=lambda r: (r.added, r.store_path))
            if p.store_path not in live
        ]

    def drop(self, dead: Sequence[str], *, dry_run: bool = False) -> GcReport:
        """Remove these paths, then free every chunk no remaining path uses; one
        transaction (a running node calls it a batch at a time)."""
        db = self.index.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM paths WHERE store_path = ?", ((p,) for p in dead))
            db.execute("DELETE FROM manifests WHERE id NOT IN (SELECT manifest FROM paths)")
            chunks, size = self._free("id NOT IN (SELECT chunk FROM manifest_chunks)")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if dry_run:
            db.execute("ROLLBACK")
        else:
            db.execute("COMMIT")
            self.checkpoint("gc-committed")
            self._punch_freed()
        return GcReport(tuple(sorted(dead)), chunks, size, dry_run)

    # --- verify

    def verify(
        self, *, repair: bool = False, on_progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        return verify_store(self.index, self.slab, repair=repair, on_progress=on_progress)

    # --- stats

    def stats(self) -> StoreStats:
        return _stats(self.index, self.slab, self.data_dir)


class Ingest:
    """Adds one store path: `add_chunk` is the manifest builder's chunk sink, `commit`
    records the path. Leaving the `with` block by an exception undoes it: the index
    ends up as it was before (chunks this ingest added are freed again).

    Chunks wait in a small queue so the index is asked about many digests in one query,
    and new chunks, placed one after another, reach the slab in one write."""

    _QUEUE = 4 << 20  # bytes of chunks waiting for a lookup

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.index = store.index
        slabs = self.index.slabs()
        if not slabs:
            with self.index.transaction():
                self.index.add_slab(_slab_name(1), store.slab_cap)
            slabs = self.index.slabs()
        last = slabs[-1]
        self._slab_id, self._cap, self._cursor = last.id, last.cap, last.size
        self._seen: set[bytes] = set()
        self._queue: list[tuple[bytes, bytes]] = []
        self._queued = 0
        self._new: list[tuple[bytes, int, int, int]] = []  # (digest, slab, offset, length)
        self._fill: list[int] = []  # ids of absent chunks given their bytes
        self._touched: set[int] = set()
        self._pending = 0
        self._created: list[bytes] = []  # committed by this ingest: undone on failure
        self.new_chunks = 0
        self.new_bytes = 0
        # Lookups, writes and commits run in order on one writer thread (SQLite and
        # pwrite release the GIL), beside the caller's reading and hashing.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self._in_flight: deque[Future[None]] = deque()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            if exc is None:
                return
            self.abort()
            if is_disk_full(exc):
                raise StoreFull(self.store.data_dir, str(exc)) from exc
        finally:
            self._writer.shutdown(wait=True, cancel_futures=True)

    def add_chunk(self, digest: bytes, data: bytes | memoryview) -> None:
        if digest in self._seen:
            return
        self._seen.add(digest)
        self._queue.append((digest, bytes(data)))  # a copy: `data` may view a reused buffer
        self._queued += len(data)
        if self._queued >= min(self._QUEUE, self.store.batch_bytes):
            queue, self._queue, self._queued = self._queue, [], 0
            self._in_flight.append(self._writer.submit(self._store, queue))
            while len(self._in_flight) > 2:  # bounds the chunk bytes held in memory
                self._in_flight.popleft().result()

    def _wait(self) -> None:
        """Hand over what is queued and wait until the writer has done all of it."""
        if self._queue:
            queue, self._queue, self._queued = self._queue, [], 0
            self._in_flight.append(self._writer.submit(self._store, queue))
        while self._in_flight:
            self._in_flight.popleft().result()

    def _store(self, queue: list[tuple[bytes, bytes]]) -> None:
        self._drain(queue)
        if self._pending >= self.store.batch_bytes:
            self.flush()

    def _drain(self, queue: list[tuple[bytes, bytes]]) -> None:
        """Look the chunks up in one go; write the ones the store lacks. New chunks get
        consecutive places, so they go to the slab as one write."""
        known = self.index.chunks([d for d, _ in queue])
        run: list[bytes | memoryview] = []
        run_start = self._cursor
        for d, data in queue:
            row = known.get(d)
            if row is not None and row.present:
                continue
            if row is not None:  # allocated but absent (a hole): its place is fixed
                self.store.slab(row.slab).write(row.offset, data)
                self._fill.append(row.id)
                self._touched.add(row.slab)
            else:
                if self._cursor + align(len(data)) > self._cap:
                    self._write_run(run_start, run)
                    run = []
                    self._next_slab()
                    run_start = self._cursor
                self._new.append((d, self._slab_id, self._cursor, len(data)))
                self._touched.add(self._slab_id)
                run.append(data)
                if len(data) % BLOCK:
                    run.append(_ZEROS[: BLOCK - len(data) % BLOCK])  # the rest of its last block
                self._cursor += align(len(data))
            self.new_chunks += 1
            self.new_bytes += len(data)
            self._pending += len(data)
        self._write_run(run_start, run)

    def _write_run(self, start: int, run: list[bytes | memoryview]) -> None:
        if run:
            self.store.slab(self._slab_id).write_many(start, run)
            self.store.checkpoint("chunks-written")

    def _next_slab(self) -> None:
        self.flush()  # the old slab's watermark is committed before moving on
        with self.index.transaction():
            self._slab_id = self.index.add_slab(
                _slab_name(len(self.index.slabs()) + 1), self.store.slab_cap
            )
        self._cap, self._cursor = self.store.slab_cap, 0

    def flush(self) -> None:
        """Sync the batch's bytes, then commit its rows: present means on disk."""
        if not self._new and not self._fill:
            return
        for slab_id in sorted(self._touched):
            self.store.slab(slab_id).sync()
        self.store.checkpoint("batch-synced")
        with self.index.transaction():
            self.index.add_chunks(self._new)
            self.index.set_present(self._fill, True)
            self.index.set_slab_size(self._slab_id, self._cursor)
        self._created.extend(d for d, *_ in self._new)
        self._new, self._fill, self._touched, self._pending = [], [], set(), 0
        self.store.checkpoint("batch-committed")

    def commit(
        self, manifest: Manifest, *, claims: Iterable[SignedClaim] = (), root: bool = True
    ) -> None:
        self.commit_many([(manifest, tuple(claims), root)])

    def commit_many(self, paths: Sequence[tuple[Manifest, Sequence[SignedClaim], bool]]) -> None:
        """Record several paths (manifest, claims, root) whose chunks were added: one
        sync and one transaction for all, which is what makes publishing thousands of
        small paths cheap."""
        self._wait()
        self.flush()
        with self.index.transaction():
            for manifest, claims, root in paths:
                _record_path(self.index, manifest, claims, root)
        self._created = []
        self.store.checkpoint("path-committed")

    def save(self) -> None:
        """Make what was added so far durable without recording a path (a fetch that
        stops early keeps the chunks it received; they filled reserved holes)."""
        self._wait()
        self.flush()

    def close(self) -> None:
        self._writer.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Undo: cut uncommitted bytes off, free the chunks this ingest committed."""
        self._queue, self._queued = [], 0
        for f in self._in_flight:
            f.cancel()
        for f in self._in_flight:
            try:
                f.result()
            except BaseException:  # noqa: BLE001 - already being handled: it is why we undo
                pass
        self._in_flight.clear()
        self._new, self._fill, self._touched, self._pending = [], [], set(), 0
        for row in self.index.slabs():
            slab = self.store.slab(row.id)
            if slab.size() > row.size:
                slab.truncate(row.size)
        if not self._created:
            return
        try:
            with self.index.transaction():
                self.index.db.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS undo (digest BLOB PRIMARY KEY) WITHOUT ROWID"
                )
                self.index.db.execute("DELETE FROM undo")
                self.index.db.executemany(
                    "INSERT OR IGNORE INTO undo VALUES (?)", ((d,) for d in self._created)
                )
                self.store._free(
                    "digest IN (SELECT digest FROM undo) AND id NOT IN (SELECT chunk FROM manifest_chunks)"
                )
        except sqlite3.OperationalError:
            # Even this small transaction failed (the disk is that full): the chunks stay
            # as committed, unused chunks, which is consistent; `ferry gc` frees them.
            return
        self._created = []
        self.store._punch_freed()


class StoreReader:
    """Reads chunks and manifest blobs for peers, on its own SQLite connection so it can
    run in another thread beside an ingest (WAL: it sees committed rows only)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.index = Index(os.path.join(store.data_dir, "index.sqlite"))
        self._slabs: dict[int, Slab] = {}

    def close(self) -> None:
        for s in self._slabs.values():
            s.close()
        self.index.close()

    def _slab(self, slab_id: int) -> Slab:
        s = self._slabs.get(slab_id)
        if s is None:
            name = next(r.name for r in self.index.slabs() if r.id == slab_id)
            s = self._slabs[slab_id] = Slab(os.path.join(self.store.data_dir, "slabs", name))
        return s

    def slab(self, slab_id: int) -> Slab:
        return self._slab(slab_id)

    @property
    def data_dir(self) -> str:
        return self.store.data_dir

    def manifest(self, store_path: StorePath | str) -> Manifest:
        state = self.path_state(str(store_path))
        if state is None:
            raise PathNotInStore(str(store_path))
        return state[0]

    def complete_manifest(self, store_path: StorePath | str) -> Manifest:
        return _complete_manifest(self.index, self.manifest(store_path), store_path)

    def stats(self) -> StoreStats:
        return _stats(self.index, self._slab, self.store.data_dir)

    def claims_by_hash(self, path_hash: str) -> list[SignedClaim]:
        return [SignedClaim.decode(d) for d in self.index.claims_by_hash(path_hash)]

    def claims_by_hashes(self, path_hashes: Sequence[str]) -> list[list[SignedClaim]]:
        """`claims_by_hash` of each, in order."""
        if len(path_hashes) < 4:
            return [self.claims_by_hash(h) for h in path_hashes]
        found = self.index.claims_by_hashes(path_hashes)
        return [[SignedClaim.decode(d) for d in found.get(h, [])] for h in path_hashes]

    def claimed_hashes(self) -> set[str]:
        """The hash parts of every path the store keeps claims for."""
        return {StorePath.parse(p).hash_part for p in self.index.claimed_paths()}

    def add_claims(
        self,
        claims: Iterable[SignedClaim],
        trusted: frozenset[str] | None = None,
        others_per_path: int = 32,
    ) -> tuple[int, int]:
        """Keep claims learned from peers (the caller verified them); peers' claims are
        the one thing written on this side. With `trusted` (encoded keys, the policy's):
        claims by other keys are kept only one per key and `others_per_path` per path
        (a store path's hash, in its store directory), first come, so junk signed with
        throwaway keys cannot bury the claims that count. Returns (new, refused)."""
        new = refused = 0
        with self.index.transaction():
            for c in claims:
                builder = c.builder.encode()
                sp = c.claim.store_path
                data = c.encode()
                if self.index.db.execute("SELECT 1 FROM claims WHERE data = ?", (data,)).fetchone():
                    continue  # known already (peers relay what they learn)
                if trusted is not None and builder not in trusted:
                    prefix = f"{sp.store_dir}/{sp.hash_part}"
                    others = [
                        b
                        for (b,) in self.index.db.execute(
                            # "-" < "." : every name with this hash, through the index
                            "SELECT builder FROM claims WHERE store_path > ? AND store_path < ?",
                            (prefix + "-", prefix + "."),
                        )
                        if b not in trusted
                    ]
                    if builder in others or len(others) >= others_per_path:
                        refused += 1
                        continue
                self.index.add_claim(str(sp), builder, data)
                new += 1
        return new, refused

    def complete_paths(self) -> list[str]:
        return [
            p.store_path for p in self.index.paths() if not self.index.missing_chunks(p.store_path)
        ]

    def path_state(self, store_path: str) -> tuple[Manifest, bool] | None:
        """The path's manifest and whether all its chunks are present, if it is recorded."""
        row = self.index.path(store_path)
        if row is None:
            return None
        data = self.index.manifest(row.manifest_digest)
        assert data is not None  # a foreign key guarantees it
        return Manifest.decode(data), not self.index.missing_chunks(store_path)

    def path_by_nar_hash(self, nar_hash: str) -> str | None:
        row = self.index.db.execute(
            "SELECT store_path FROM paths WHERE nar_hash = ? LIMIT 1", (nar_hash,)
        ).fetchone()
        return None if row is None else str(row[0])

    def blobs(
        self, digests: list[bytes], rows: Mapping[bytes, ChunkRow] | None = None
    ) -> dict[bytes, bytes]:
        """The chunks and manifests among `digests` that are present and intact; `rows`:
        their index rows, when the caller looked them up already."""
        out: dict[bytes, bytes] = {}
        for d, row in (self.index.chunks(digests) if rows is None else rows).items():
            if row.present:
                try:
                    data = self._slab(row.slab).read(row.offset, row.length)
                except OSError:
                    continue
                if blake3_digest(data) == d:  # never pass on rot
                    out[d] = data
        for d in digests:
            if d not in out:
                m = self.index.manifest(d)
                if m is not None:
                    out[d] = m
        return out


def verify_store(
    index: Index,
    slab: Callable[[int], Slab],
    *,
    repair: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Read every present chunk and check its BLAKE3; check each path's manifest and
    that its chunks are present. Reports everything; stops for nothing. With `repair`,
    corrupt chunks become holes (absent), so a re-publish or a fetch writes them again.
    Only reads until it repairs: a running node runs it on a reader of its own."""
    report = VerifyReport()
    ends: dict[int, int] = {}
    sizes = {r.id: r.size for r in index.slabs()}
    bad_ids: list[int] = []
    for row in list(index.all_chunks(present_only=True)):
        report.chunks += 1
        report.bytes += row.length
        problem = None
        if row.offset < ends.get(row.slab, 0) or row.offset % 4096:
            problem = "its extent overlaps another chunk's or is misaligned"
        elif row.offset + row.length > sizes.get(row.slab, 0):
            problem = "it lies past its slab's allocated size"
        else:
            try:
                data = slab(row.slab).read(row.offset, row.length)
                if blake3_digest(data) != row.digest:
                    problem = "its bytes do not hash to its digest"
            except OSError as e:
                problem = f"cannot read it: {e.strerror or e}"
        ends[row.slab] = max(ends.get(row.slab, 0), row.offset + align(row.length))
        if problem:
            report.corrupt.append((row.digest, problem))
            bad_ids.append(row.id)
        if on_progress:
            on_progress(row.length)
    if repair and bad_ids:
        with index.transaction():
            index.set_present(bad_ids, False)
        report.repaired = True
    bad = {d for d, _ in report.corrupt}
    for p in index.paths():
        encoded = index.manifest(p.manifest_digest)
        try:
            m = Manifest.decode(encoded or b"")
        except ManifestError as e:
            report.bad_paths.append((p.store_path, f"its manifest is damaged: {e}"))
            continue
        if m.digest() != p.manifest_digest or str(m.store_path) != p.store_path:
            report.bad_paths.append((p.store_path, "its manifest does not match the index"))
            continue
        broken = sum(1 for d in set(m.chunk_digests()) if d in bad)
        missing = index.missing_chunks(p.store_path)
        if broken and not repair:
            report.bad_paths.append((p.store_path, f"{broken} of its chunks are corrupt"))
        elif missing:
            report.bad_paths.append((p.store_path, f"{missing} of its chunks are missing"))
    return report


def _stats(ix: Index, slab: Callable[[int], Slab], data_dir: str) -> StoreStats:
    paths = ix.paths()
    complete = sum(1 for p in paths if not ix.missing_chunks(p.store_path))
    index_bytes = sum(
        os.path.getsize(p)
        for p in (os.path.join(data_dir, f"index.sqlite{s}") for s in ("", "-wal"))
        if os.path.exists(p)
    )
    return StoreStats(
        paths=len(paths),
        complete_paths=complete,
        roots=len(ix.roots()),
        nar_bytes=sum(p.nar_size for p in paths),
        chunk_bytes=ix.scalar(
            "SELECT sum(c.length) FROM paths p JOIN manifest_chunks mc ON mc.manifest = p.manifest "
            "JOIN chunks c ON c.id = mc.chunk"
        ),
        unique_chunks=ix.scalar("SELECT count(*) FROM chunks WHERE present = 1"),
        unique_bytes=ix.scalar("SELECT sum(length) FROM chunks WHERE present = 1"),
        slab_disk_bytes=sum(slab(r.id).disk_bytes() for r in ix.slabs()),
        index_bytes=index_bytes,
    )


def _complete_manifest(index: Index, manifest: Manifest, store_path: StorePath | str) -> Manifest:
    """`manifest`, or PathIncomplete if some of the path's chunks are not present."""
    missing = index.missing_chunks(str(store_path))
    if missing:
        raise PathIncomplete(str(store_path), missing)
    return manifest


def _record_path(
    index: Index, manifest: Manifest, claims: Iterable[SignedClaim], root: bool
) -> None:
    """Inside a transaction: the manifest, the path, its claims and root (its chunks,
    present or reserved, are in the index already)."""
    sp = str(manifest.store_path)
    data = manifest.encode()
    mid = index.add_manifest(blake3_digest(data), data, manifest.chunk_digests())
    index.put_path(
        sp,
        mid,
        str(manifest.nar_hash),
        manifest.nar_size,
        str(manifest.deriver) if manifest.deriver else None,
        (str(r) for r in manifest.references),
        int(time.time()),
    )
    for c in claims:
        index.add_claim(sp, c.builder.encode(), c.encode())
    if root:
        index.add_root(sp)


def _slab_name(n: int) -> str:
    return f"slab-{n:06d}"


class ReaderChunks:
    """A reader's chunks as a ChunkSource (export, restore, the gateway's NARs): verified
    on every read, so rot is never passed on."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def read_chunk(self, digest: bytes) -> bytes:
        data = self.reader.blobs([digest]).get(digest)
        if data is None:
            raise ChunkMissing(digest)
        return data
