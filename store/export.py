"""A manifest plus a source of chunks gives back the NAR, byte for byte, verified."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from store import nar
from store.chunking import digest
from store.manifest import Manifest
from store.narhash import NarHasher


class ChunkSource(Protocol):
    def read_chunk(self, digest: bytes) -> bytes | memoryview:
        """The chunk's bytes; raises ChunkMissing if it is not available."""
        ...


class ExportError(Exception):
    """The NAR could not be reproduced."""


class ChunkMissing(ExportError, KeyError):
    def __init__(self, digest: bytes) -> None:
        self.digest = digest
        super().__init__(f"chunk {digest.hex()} is not available; fetch it or re-ingest the path")

    def __str__(self) -> str:
        return str(self.args[0])


class ChunkCorrupt(ExportError):
    def __init__(self, digest: bytes, detail: str) -> None:
        self.digest = digest
        super().__init__(f"chunk {digest.hex()} is corrupt ({detail}); run `ferry verify`")


class NarHashMismatch(ExportError):
    pass


class MemoryChunks:
    """Chunks in a dict: for tests, the simulator and small tools."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, bytes] = {}

    def add(self, d: bytes, data: bytes | memoryview) -> None:
        if d not in self.chunks:
            self.chunks[d] = bytes(data)

    def read_chunk(self, d: bytes) -> bytes:
        try:
            return self.chunks[d]
        except KeyError:
            raise ChunkMissing(d) from None


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A place in a NAR where a chunk's bytes go."""

    digest: bytes
    length: int
    path: bytes  # the file it belongs to, for messages


def nar_layout(manifest: Manifest) -> Iterator[bytes | memoryview | ChunkRef]:
    """The manifest's NAR in order: framing (and inline contents) as bytes, chunk
    contents as references, so a reader can seek without touching a chunk."""
    enc = nar.NarEncoder()
    for entry in manifest.entries:
        yield enc.encode(entry.node())
        if not entry.is_file or not entry.size:
            continue
        if not entry.chunks:
            enc.skip_contents(entry.size)
            yield entry.inline
            continue
        for (_, length), d in zip(manifest.chunking.spans(entry.size), entry.chunks):
            enc.skip_contents(length)
            yield ChunkRef(d, length, entry.path)
    yield enc.finish()


def read_ref(ref: ChunkRef, source: ChunkSource, *, verify: bool = True) -> bytes | memoryview:
    data = source.read_chunk(ref.digest)
    if len(data) != ref.length:
        raise ChunkCorrupt(ref.digest, f"{len(data)} bytes where {ref.path!r} needs {ref.length}")
    if verify and digest(data) != ref.digest:
        raise ChunkCorrupt(ref.digest, "BLAKE3 mismatch")
    return data


def write_nar(
    manifest: Manifest, source: ChunkSource, *, verify_chunks: bool = True
) -> Iterator[bytes | memoryview]:
    """Stream the manifest's NAR. Every chunk's BLAKE3 is checked (unless the caller
    already did) and NarHash and NarSize are checked at the end: a mismatch raises
    NarHashMismatch after the last byte, so a consumer must not commit before then."""
    with NarHasher() as hasher:
        for piece in nar_layout(manifest):
            data = (
                read_ref(piece, source, verify=verify_chunks)
                if isinstance(piece, ChunkRef)
                else piece
            )
            if data:
                hasher.update(data)
                yield data
        got = hasher.hash()
        if hasher.size != manifest.nar_size or got != manifest.nar_hash:
            raise NarHashMismatch(
                f"reproduced NAR of {manifest.store_path} has {got} and {hasher.size} bytes; "
                f"the manifest says {manifest.nar_hash} and {manifest.nar_size} bytes"
            )
