"""A manifest plus a source of chunks gives back the NAR, byte for byte, verified."""

from __future__ import annotations

from collections.abc import Iterator
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


def write_nar(manifest: Manifest, source: ChunkSource, *, verify_chunks: bool = True) -> Iterator[bytes | memoryview]:
    """Stream the manifest's NAR. Every chunk's BLAKE3 is checked (unless the caller
    already did) and NarHash and NarSize are checked at the end: a mismatch raises
    NarHashMismatch after the last byte, so a consumer must not commit before then."""
    enc = nar.NarEncoder()
    with NarHasher() as hasher:
        for entry in manifest.entries:
            framing = enc.encode(entry.node())
            hasher.update(framing)
            yield framing
            if not entry.is_file or not entry.size:
                continue
            if not entry.chunks:
                enc.skip_contents(entry.size)
                hasher.update(entry.inline)
                yield entry.inline
                continue
            for (_, length), d in zip(manifest.chunking.spans(entry.size), entry.chunks):
                data = source.read_chunk(d)
                if len(data) != length:
                    raise ChunkCorrupt(d, f"{len(data)} bytes where {entry.path!r} needs {length}")
                if verify_chunks and digest(data) != d:
                    raise ChunkCorrupt(d, "BLAKE3 mismatch")
                enc.skip_contents(length)
                hasher.update(data)
                yield data
        tail = enc.finish()
        hasher.update(tail)
        yield tail
        got = hasher.hash()
        if hasher.size != manifest.nar_size or got != manifest.nar_hash:
            raise NarHashMismatch(
                f"reproduced NAR of {manifest.store_path} has {got} and {hasher.size} bytes; "
                f"the manifest says {manifest.nar_hash} and {manifest.nar_size} bytes"
            )
