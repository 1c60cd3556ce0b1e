"""Building manifests: from a directory tree, from a NAR stream.

Both compute the NarHash and NarSize of the NAR the tree makes and cut every file into
chunks as `ChunkingPolicy` says. `on_chunk(digest, data)` sees each chunk once per
occurrence (the store decides what it lacks); `data` may be a view into a reused
buffer, so a sink that keeps it must copy it. `on_progress(n)` is told of every `n`
file bytes processed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from store import dump, nar
from store.chunking import DEFAULT_POLICY, ChunkingPolicy, FileChunker
from store.manifest import Entry, EntryKind, Manifest
from store.narhash import NarHasher
from store.path import StorePath

ChunkSink = Callable[[bytes, "bytes | memoryview"], None]
Progress = Callable[[int], None]


@dataclass(slots=True)
class _Entries:
    """Accumulates entries, cutting file contents into chunks as they arrive."""

    policy: ChunkingPolicy
    on_chunk: ChunkSink | None
    on_progress: Progress | None
    entries: list[Entry] = field(default_factory=list)
    _file: nar.Regular | None = None
    _chunker: FileChunker | None = None
    _digests: list[bytes] = field(default_factory=list)
    _inline: bytearray = field(default_factory=bytearray)

    def node(self, node: nar.Node) -> None:
        self.end_file()
        if isinstance(node, nar.Directory):
            self.entries.append(Entry(node.path, EntryKind.DIRECTORY))
        elif isinstance(node, nar.Symlink):
            self.entries.append(Entry(node.path, EntryKind.SYMLINK, len(node.target), inline=node.target))
        else:
            self._file = node
            if not self.policy.is_inline(node.size):
                self._chunker = FileChunker(node.size, self.policy)

    def contents(self, data: bytes | memoryview) -> None:
        if self._chunker is None:
            self._inline += data
        else:
            self._take(self._chunker.feed(data))
        if self.on_progress:
            self.on_progress(len(data))

    def end_file(self) -> None:
        f = self._file
        if f is None:
            return
        kind = EntryKind.EXECUTABLE if f.executable else EntryKind.REGULAR
        if self._chunker is None:
            self.entries.append(Entry(f.path, kind, f.size, inline=bytes(self._inline)))
            self._inline = bytearray()
        else:
            last = self._chunker.finish()
            if last:
                self._take([last])
            self.entries.append(Entry(f.path, kind, f.size, chunks=tuple(self._digests)))
            self._digests = []
            self._chunker = None
        self._file = None

    def _take(self, chunks: list[tuple[bytes, bytes | memoryview]]) -> None:
        for d, data in chunks:
            self._digests.append(d)
            if self.on_chunk:
                self.on_chunk(d, data)


def from_directory(
    root: str | bytes,
    store_path: StorePath,
    *,
    references: Iterable[StorePath] = (),
    deriver: StorePath | None = None,
    policy: ChunkingPolicy = DEFAULT_POLICY,
    on_chunk: ChunkSink | None = None,
    on_progress: Progress | None = None,
) -> Manifest:
    """The manifest of the tree at `root` as the store path `store_path`."""
    acc = _Entries(policy, on_chunk, on_progress)
    enc = nar.NarEncoder()
    with NarHasher() as hasher:
        for node, fspath in dump.walk(root):
            hasher.update(enc.encode(node))
            acc.node(node)
            if isinstance(node, nar.Regular) and node.size:
                for data in dump.read_file(fspath, node.size):
                    enc.skip_contents(len(data))
                    hasher.update(data)
                    acc.contents(data)
        hasher.update(enc.finish())
        acc.end_file()
        nar_hash = hasher.hash()
        nar_size = hasher.size
    return _manifest(store_path, nar_hash, nar_size, references, deriver, policy, acc.entries)


def from_nar(
    pieces: Iterable[bytes | memoryview],
    store_path: StorePath,
    *,
    references: Iterable[StorePath] = (),
    deriver: StorePath | None = None,
    policy: ChunkingPolicy = DEFAULT_POLICY,
    on_chunk: ChunkSink | None = None,
    on_progress: Progress | None = None,
) -> Manifest:
    """The manifest of a NAR given as byte pieces; raises NarError if it is malformed."""
    acc = _Entries(policy, on_chunk, on_progress)
    parser = nar.NarParser()
    with NarHasher() as hasher:
        for piece in pieces:
            piece = bytes(piece)  # the hasher's thread reads it later: must not change
            hasher.update(piece)
            for ev in parser.feed(piece):
                if isinstance(ev, nar.Contents):
                    acc.contents(ev.data)
                else:
                    acc.node(ev)
        parser.close()
        acc.end_file()
        nar_hash = hasher.hash()
        nar_size = hasher.size
    return _manifest(store_path, nar_hash, nar_size, references, deriver, policy, acc.entries)


def _manifest(
    store_path: StorePath,
    nar_hash: object,
    nar_size: int,
    references: Iterable[StorePath],
    deriver: StorePath | None,
    policy: ChunkingPolicy,
    entries: list[Entry],
) -> Manifest:
    refs = tuple(sorted(set(references), key=str))
    return Manifest(store_path, nar_hash, nar_size, refs, deriver, policy, tuple(entries))  # type: ignore[arg-type]


class NarHashMismatch(ValueError):
    """ferry and Nix disagree on a path's NarHash: the store path was modified."""


def from_store_path(
    path: StorePath,
    *,
    store: str | None = None,
    policy: ChunkingPolicy = DEFAULT_POLICY,
    on_chunk: ChunkSink | None = None,
    on_progress: Progress | None = None,
) -> Manifest:
    """The manifest of a valid path in a Nix store (`store`: as Nix's `--store`).

    References and deriver come from Nix; the NarHash ferry computes must equal the
    one Nix recorded, or the path on disk is not what Nix registered.
    """
    from store import nixcli

    info = nixcli.path_info(path, store)
    manifest = from_directory(
        nixcli.physical_path(path, store), path, references=info.references, deriver=info.deriver,
        policy=policy, on_chunk=on_chunk, on_progress=on_progress,
    )
    if manifest.nar_hash != info.nar_hash or manifest.nar_size != info.nar_size:
        raise NarHashMismatch(
            f"{path} on disk has NarHash {manifest.nar_hash} ({manifest.nar_size} bytes) but Nix "
            f"recorded {info.nar_hash} ({info.nar_size} bytes); repair it with `nix-store --repair-path`"
        )
    return manifest
