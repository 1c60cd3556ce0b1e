"""ferry's manifest: a store path's tree in NAR order, with chunk digests instead of data.

Canonical msgpack, one array, fixed field order, no maps and no floats, so the same NAR
always yields the same bytes and honest builders sign the same digest:

    ["ferry-manifest-1",
     store_path: str, nar_hash: bin(32, sha256), nar_size: uint,
     references: [str, ...] (full store paths, sorted, unique),
     deriver: str | nil,
     chunking: [inline_max, [[limit, chunk_size], ...], largest_chunk_size],
     entries: [[path: bin, kind: uint, size: uint, payload: bin], ...]]

Entries are in NAR order; `path` is relative (b"" is the root). `kind` is an
`EntryKind`. `payload` is empty for a directory, the target for a symlink (size = its
length), the contents for a file of at most `inline_max` bytes, else the file's chunk
digests concatenated (32 bytes each). The manifest digest is BLAKE3 of the bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

import blake3
import msgpack

from store import nar
from store.chunking import DIGEST_SIZE, ChunkingError, ChunkingPolicy
from store.hash import Hash
from store.path import StorePath, StorePathError

FORMAT = "ferry-manifest-1"


class ManifestError(ValueError):
    """Bytes that are not a valid, canonical ferry manifest."""


class EntryKind(enum.IntEnum):
    DIRECTORY = 0
    REGULAR = 1
    EXECUTABLE = 2
    SYMLINK = 3


@dataclass(frozen=True, slots=True)
class Entry:
    path: bytes
    kind: EntryKind
    size: int = 0
    inline: bytes = b""  # symlink target, or a small file's contents
    chunks: tuple[bytes, ...] = ()

    @property
    def is_file(self) -> bool:
        return self.kind in (EntryKind.REGULAR, EntryKind.EXECUTABLE)

    def node(self) -> nar.Node:
        """The NAR event that opens this entry."""
        if self.kind is EntryKind.DIRECTORY:
            return nar.Directory(self.path)
        if self.kind is EntryKind.SYMLINK:
            return nar.Symlink(self.path, self.inline)
        return nar.Regular(self.path, self.size, self.kind is EntryKind.EXECUTABLE)

    def _encode(self) -> list[object]:
        payload = b"".join(self.chunks) if self.chunks else self.inline
        return [self.path, int(self.kind), self.size, payload]


@dataclass(frozen=True, slots=True)
class ManifestStats:
    entries: int
    files: int
    directories: int
    symlinks: int
    file_bytes: int
    inline_bytes: int
    chunks: int
    unique_chunks: int
    unique_chunk_bytes: int


@dataclass(frozen=True, slots=True)
class Manifest:
    store_path: StorePath
    nar_hash: Hash
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None
    chunking: ChunkingPolicy
    entries: tuple[Entry, ...]

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                FORMAT,
                str(self.store_path),
                self.nar_hash.digest,
                self.nar_size,
                [str(r) for r in self.references],
                str(self.deriver) if self.deriver else None,
                self.chunking.encode(),
                [e._encode() for e in self.entries],
            ],
            use_bin_type=True,
        )

    def digest(self) -> bytes:
        return blake3.blake3(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and validate; rejects anything that is not exactly canonical."""
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
            raise ManifestError(f"manifest is not valid msgpack: {e}") from None
        if not isinstance(raw, list) or len(raw) != 8 or raw[0] != FORMAT:
            raise ManifestError(f"not a {FORMAT} manifest")
        _, sp, nar_hash, nar_size, refs, deriver, chunking, entries = raw
        try:
            store_path = StorePath.parse(_str(sp, "store path"))
            store_dir = store_path.store_dir
            references = tuple(
                StorePath.decode(_str(r, "reference"), store_dir) for r in _list(refs, "references")
            )
            drv = None if deriver is None else StorePath.decode(_str(deriver, "deriver"), store_dir)
            policy = ChunkingPolicy.decode(chunking)
        except (StorePathError, ChunkingError) as e:
            raise ManifestError(str(e)) from None
        if [str(r) for r in references] != sorted({str(r) for r in references}):
            raise ManifestError("manifest references are not sorted and unique")
        if not isinstance(nar_hash, bytes) or len(nar_hash) != 32:
            raise ManifestError("manifest NarHash must be 32 bytes of sha256")
        if not isinstance(nar_size, int) or nar_size < 0:
            raise ManifestError("manifest NarSize must be a non-negative integer")
        manifest = cls(
            store_path,
            Hash.sha256(nar_hash),
            nar_size,
            references,
            drv,
            policy,
            tuple(_decode_entry(i, e, policy) for i, e in enumerate(_list(entries, "entries"))),
        )
        framed = manifest.framed_size()
        if framed != nar_size:
            raise ManifestError(f"entries make a NAR of {framed} bytes but NarSize is {nar_size}")
        if manifest.encode() != data:
            raise ManifestError("manifest is not in canonical form")
        return manifest

    def framed_size(self) -> int:
        """The NAR size the entries imply; raises ManifestError if they break NAR rules."""
        enc = nar.NarEncoder()
        try:
            for e in self.entries:
                enc.encode(e.node())
                if e.is_file:
                    enc.skip_contents(e.size)
            enc.finish()
        except nar.NarError as e:
            raise ManifestError(
                f"manifest entries break a NAR rule: {e.rule.value} ({e.detail})"
            ) from None
        return enc.offset

    def chunk_digests(self) -> Iterator[bytes]:
        for e in self.entries:
            yield from e.chunks

    def chunk_spans(self) -> Iterator[tuple[Entry, int, int, bytes]]:
        """(entry, offset, length, digest) for every chunk, in NAR order."""
        for e in self.entries:
            if e.chunks:
                for (off, length), d in zip(self.chunking.spans(e.size), e.chunks):
                    yield e, off, length, d

    def stats(self) -> ManifestStats:
        unique: dict[bytes, int] = {}
        files = dirs = links = file_bytes = inline_bytes = chunks = 0
        for e in self.entries:
            if e.kind is EntryKind.DIRECTORY:
                dirs += 1
            elif e.kind is EntryKind.SYMLINK:
                links += 1
            else:
                files += 1
                file_bytes += e.size
                if not e.chunks:
                    inline_bytes += e.size
        for _, _, length, d in self.chunk_spans():
            chunks += 1
            unique.setdefault(d, length)
        return ManifestStats(
            entries=len(self.entries),
            files=files,
            directories=dirs,
            symlinks=links,
            file_bytes=file_bytes,
            inline_bytes=inline_bytes,
            chunks=chunks,
            unique_chunks=len(unique),
            unique_chunk_bytes=sum(unique.values()),
        )


def _str(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise ManifestError(f"manifest {what} must be a string")
    return v


def _list(v: object, what: str) -> list[object]:
    if not isinstance(v, list):
        raise ManifestError(f"manifest {what} must be an array")
    return v


def _decode_entry(i: int, raw: object, policy: ChunkingPolicy) -> Entry:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise ManifestError(f"manifest entry {i} must be [path, kind, size, payload]")
    path, kind, size, payload = raw
    if not isinstance(path, bytes) or not isinstance(payload, bytes):
        raise ManifestError(f"manifest entry {i}: path and payload must be binary")
    if not isinstance(size, int) or size < 0:
        raise ManifestError(f"manifest entry {i} ({path!r}): size must be a non-negative integer")
    try:
        k = EntryKind(kind)
    except ValueError:
        raise ManifestError(f"manifest entry {i} ({path!r}): unknown kind {kind!r}") from None
    where = f"manifest entry {i} ({path!r})"
    if k is EntryKind.DIRECTORY:
        if size or payload:
            raise ManifestError(f"{where}: a directory has no size or payload")
        return Entry(path, k)
    if k is EntryKind.SYMLINK:
        if size != len(payload):
            raise ManifestError(f"{where}: symlink size must be the target's length")
        return Entry(path, k, size, inline=payload)
    if policy.is_inline(size):
        if len(payload) != size:
            raise ManifestError(
                f"{where}: inline file of {size} bytes has {len(payload)} bytes of payload"
            )
        return Entry(path, k, size, inline=payload)
    n = policy.chunk_count(size)
    if len(payload) != n * DIGEST_SIZE:
        raise ManifestError(f"{where}: a file of {size} bytes needs {n} chunk digests")
    return Entry(
        path,
        k,
        size,
        chunks=tuple(payload[j : j + DIGEST_SIZE] for j in range(0, len(payload), DIGEST_SIZE)),
    )


__all__ = ["FORMAT", "Entry", "EntryKind", "Manifest", "ManifestError", "ManifestStats"]
