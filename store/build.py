"""Building manifests: from a directory tree, from a NAR stream.

Both compute the NarHash and NarSize of the NAR the tree makes and cut every file into
chunks as `ChunkingPolicy` says. `on_chunk(digest, data)` sees each chunk once per
occurrence (the store decides what it lacks); `data` may be a view into a larger
read block, so a sink that keeps it should copy it (`bytes(data)`) to free the block.
`on_progress(n)` is told of every `n` file bytes processed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from store import dump, nar, nixcli
from store.chunking import DEFAULT_POLICY, ChunkingPolicy, FileChunker, digest
from store.manifest import Entry, EntryKind, Manifest
from store.narhash import NarHasher
from store.path import StorePath

Chunk = bytes | memoryview
ChunkSink = Callable[[bytes, Chunk], None]
Progress = Callable[[int], None]


class _Digests:
    """BLAKE3 of chunks on worker threads, results in submission order.

    Chunks are batched (~1 MiB per task, across small files too) so thread hand-off
    costs far less than the hashing; at most `_IN_FLIGHT` batches are pending, which
    bounds the memory held by chunks not yet hashed.
    """

    _BATCH = 1 << 20
    _IN_FLIGHT = 8

    def __init__(self, workers: int, on_chunk: ChunkSink | None) -> None:
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="blake3") if workers > 0 else None
        )
        self._on_chunk = on_chunk
        self._pending: deque[
            tuple[Future[list[bytes]] | list[bytes], list[Chunk], list[list[bytes]]]
        ] = deque()
        self._chunks: list[Chunk] = []
        self._dests: list[list[bytes]] = []
        self._bytes = 0

    def add(self, chunk: Chunk, dest: list[bytes]) -> None:
        """Hash `chunk`; its digest is appended to `dest` by the time `drain` returns."""
        self._chunks.append(chunk)
        self._dests.append(dest)
        self._bytes += len(chunk)
        if self._bytes >= self._BATCH:
            self._submit()

    def drain(self) -> None:
        self._submit()
        while self._pending:
            self._resolve()

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self) -> None:
        if not self._chunks:
            return
        chunks, dests = self._chunks, self._dests
        self._chunks, self._dests, self._bytes = [], [], 0
        work = self._pool.submit(_hash_all, chunks) if self._pool else _hash_all(chunks)
        self._pending.append((work, chunks, dests))
        while len(self._pending) > self._IN_FLIGHT:
            self._resolve()

    def _resolve(self) -> None:
        work, chunks, dests = self._pending.popleft()
        digests = work.result() if isinstance(work, Future) else work
        for d, chunk, dest in zip(digests, chunks, dests):
            dest.append(d)
            if self._on_chunk:
                self._on_chunk(d, chunk)


def _hash_all(chunks: list[Chunk]) -> list[bytes]:
    return [digest(c) for c in chunks]


@dataclass(slots=True)
class _Entries:
    """Accumulates entries in NAR order; file contents are cut into chunks and hashed
    by `_Digests`, so a file's digests are complete only after `finish`."""

    policy: ChunkingPolicy
    digests: _Digests
    on_progress: Progress | None
    _entries: list[tuple[nar.Node, list[bytes] | bytes]] = field(default_factory=list)
    _file: nar.Regular | None = None
    _chunker: FileChunker | None = None
    _file_digests: list[bytes] = field(default_factory=list)
    _inline: bytearray = field(default_factory=bytearray)

    def event(self, ev: nar.NarEvent) -> None:
        if isinstance(ev, nar.Contents):
            self.contents(ev.data)
        else:
            self.node(ev)

    def node(self, node: nar.Node) -> None:
        self.end_file()
        if isinstance(node, nar.Regular):
            self._file = node
            if not self.policy.is_inline(node.size):
                self._chunker = FileChunker(node.size, self.policy)
                self._file_digests = []
        else:
            self._entries.append((node, b""))

    def contents(self, data: bytes | memoryview) -> None:
        if self._chunker is None:
            self._inline += data
        else:
            for chunk in self._chunker.feed(data):
                self.digests.add(chunk, self._file_digests)
        if self.on_progress:
            self.on_progress(len(data))

    def end_file(self) -> None:
        f = self._file
        if f is None:
            return
        if self._chunker is None:
            self._entries.append((f, bytes(self._inline)))
            self._inline = bytearray()
        else:
            last = self._chunker.finish()
            if last:
                self.digests.add(last, self._file_digests)
            self._entries.append((f, self._file_digests))
            self._chunker = None
        self._file = None

    def finish(self) -> list[Entry]:
        self.end_file()
        self.digests.drain()
        out = []
        for node, payload in self._entries:
            if isinstance(node, nar.Directory):
                out.append(Entry(node.path, EntryKind.DIRECTORY))
            elif isinstance(node, nar.Symlink):
                out.append(
                    Entry(node.path, EntryKind.SYMLINK, len(node.target), inline=node.target)
                )
            else:
                kind = EntryKind.EXECUTABLE if node.executable else EntryKind.REGULAR
                if isinstance(payload, bytes):
                    out.append(Entry(node.path, kind, node.size, inline=payload))
                else:
                    out.append(Entry(node.path, kind, node.size, chunks=tuple(payload)))
        return out


def default_workers() -> int:
    """BLAKE3 threads for manifest building: only on cores that the NarHash thread and
    the walking thread leave free. On 2 CPUs that is none: measured with
    bench/formats.py, a BLAKE3 worker there only contends (0.49 s vs 0.40 s for 321 MB)."""
    return max(0, (os.cpu_count() or 1) - 2)


class _Build:
    """One manifest being built: NarHash on its thread, chunk digests on theirs."""

    def __init__(
        self,
        policy: ChunkingPolicy,
        workers: int | None,
        on_chunk: ChunkSink | None,
        on_progress: Progress | None,
    ) -> None:
        self.policy = policy
        self.hasher = NarHasher()
        self._digests = _Digests(default_workers() if workers is None else workers, on_chunk)
        self.entries = _Entries(policy, self._digests, on_progress)

    def __enter__(self) -> _Build:
        return self

    def __exit__(self, *exc: object) -> None:
        self._digests.close()
        self.hasher.close()

    def manifest(
        self, store_path: StorePath, references: Iterable[StorePath], deriver: StorePath | None
    ) -> Manifest:
        entries = self.entries.finish()
        refs = tuple(sorted(set(references), key=str))
        return Manifest(
            store_path,
            self.hasher.hash(),
            self.hasher.size,
            refs,
            deriver,
            self.policy,
            tuple(entries),
        )


def from_directory(
    root: str | bytes,
    store_path: StorePath,
    *,
    references: Iterable[StorePath] = (),
    deriver: StorePath | None = None,
    policy: ChunkingPolicy = DEFAULT_POLICY,
    on_chunk: ChunkSink | None = None,
    on_progress: Progress | None = None,
    workers: int | None = None,
) -> Manifest:
    """The manifest of the tree at `root` as the store path `store_path`.

    `workers` BLAKE3 threads (default `default_workers()`; 0 hashes on this thread).
    """
    enc = nar.NarEncoder()
    with _Build(policy, workers, on_chunk, on_progress) as b:
        for ev in dump.events(root):
            b.hasher.update(enc.encode(ev))  # file contents come back as they are
            b.entries.event(ev)
        b.hasher.update(enc.finish())
        return b.manifest(store_path, references, deriver)


def from_nar(
    pieces: Iterable[bytes | memoryview],
    store_path: StorePath,
    *,
    references: Iterable[StorePath] = (),
    deriver: StorePath | None = None,
    policy: ChunkingPolicy = DEFAULT_POLICY,
    on_chunk: ChunkSink | None = None,
    on_progress: Progress | None = None,
    workers: int | None = None,
) -> Manifest:
    """The manifest of a NAR given as byte pieces; raises NarError if it is malformed."""
    parser = nar.NarParser()
    with _Build(policy, workers, on_chunk, on_progress) as b:
        for piece in pieces:
            piece = bytes(piece)  # the hasher's thread reads it later: must not change
            b.hasher.update(piece)
            for ev in parser.feed(piece):
                b.entries.event(ev)
        parser.close()
        return b.manifest(store_path, references, deriver)


class ModifiedStorePath(ValueError):
    """ferry and Nix disagree on a path's NarHash: the store path was modified."""


def from_store_path(
    path: StorePath,
    *,
    store: str | None = None,
    policy: ChunkingPolicy = DEFAULT_POLICY,
    on_chunk: ChunkSink | None = None,
    on_progress: Progress | None = None,
    info: nixcli.PathInfo | None = None,
) -> Manifest:
    """The manifest of a valid path in a Nix store (`store`: as Nix's `--store`).

    References and deriver come from Nix (`info`, if the caller has asked already); the
    NarHash ferry computes must equal the one Nix recorded, or the path on disk is not
    what Nix registered.
    """
    if info is None:
        info = nixcli.path_info(path, store)
    manifest = from_directory(
        nixcli.physical_path(path, store),
        path,
        references=info.references,
        deriver=info.deriver,
        policy=policy,
        on_chunk=on_chunk,
        on_progress=on_progress,
    )
    if manifest.nar_hash != info.nar_hash or manifest.nar_size != info.nar_size:
        raise ModifiedStorePath(
            f"{path} on disk has NarHash {manifest.nar_hash} ({manifest.nar_size} bytes) but Nix "
            f"recorded {info.nar_hash} ({info.nar_size} bytes); repair it with `nix-store --repair-path`"
        )
    return manifest
