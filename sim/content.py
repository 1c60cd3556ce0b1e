"""Closures to simulate: store paths with real manifests, chunks and signed claims, made
from a seeded random generator so a run is the same every time.

Bytes are scaled: every real byte of chunk data stands for `scale` bytes on the links
(`sim.link`), so a 500 MB closure costs 500 MB / scale of hashing and compression per
copy while the links carry it at its full size. Chunks are 4 KiB of real data (the
smallest size a manifest allows): 1 MiB on the links at a scale of 256 (ferry's chunk
size for large files), 4 MiB at the default 1024, which keeps a 1000-node run to
minutes (the simulator's cost is per chunk transfer, not per byte).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from store import build, export, nar
from store.chunking import ChunkingPolicy
from store.manifest import Manifest
from store.path import StorePath
from trust.claim import SignedClaim, sign_manifest
from trust.key import SecretKey

CHUNK = 4096
SIM_CHUNKING = ChunkingPolicy(tiers=(), largest=CHUNK)
_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


@dataclass(frozen=True)
class PathData:
    manifest: Manifest
    chunks: dict[bytes, bytes]


@dataclass(frozen=True)
class Release:
    """A closure: its paths (the root first)."""

    paths: tuple[PathData, ...]

    @property
    def root(self) -> StorePath:
        return self.paths[0].manifest.store_path

    @property
    def chunk_bytes(self) -> int:
        return sum(len(c) for p in self.paths for c in p.chunks.values())

    def claims(self, key: SecretKey) -> dict[StorePath, SignedClaim]:
        return {p.manifest.store_path: sign_manifest(p.manifest, key, time=0) for p in self.paths}


def store_path(rng: random.Random, name: str) -> StorePath:
    return StorePath("/nix/store", "".join(rng.choice(_BASE32) for _ in range(32)), name)


def key(rng: random.Random, name: str) -> SecretKey:
    return SecretKey(name, rng.randbytes(32))


def release(
    rng: random.Random,
    *,
    paths: int,
    real_bytes: int,
    prefix: str = "pkg",
    previous: Release | None = None,
    change: float = 0.02,
) -> Release:
    """A closure of `paths` store paths holding `real_bytes` of chunk data in all. With
    `previous`, the next generation of it after a mass rebuild: the same names under new
    hashes, each file with a `change` fraction of its chunks edited in a few bytes and
    its dependencies' new store paths written into it."""
    names = [f"{prefix}{i:02d}-1.0" for i in range(paths)]
    sps = [store_path(rng, n) for n in names]
    per_path = max(CHUNK, real_bytes // paths)
    out = []
    for i, sp in enumerate(sps):
        refs = (
            sps[i + 1 :] if i == 0 else sps[i + 1 : i + 2]
        )  # the root needs everything; a chain below
        if previous is None:
            data = bytearray(rng.randbytes(per_path))
        else:
            old = previous.paths[i]
            data = bytearray(b"".join(old.chunks[d] for d in old.manifest.chunk_digests()))
            for c in range(0, len(data), CHUNK):
                if rng.random() < change:
                    at = c + rng.randrange(0, CHUNK - 16)
                    data[at : at + 16] = rng.randbytes(16)
        # Where a build writes its dependencies' paths (an ELF RUNPATH, a script): the
        # first chunk, the way a mass rebuild touches every path.
        stamp = " ".join(str(r) for r in [sp, *refs]).encode()[: CHUNK - 64]
        data[64 : 64 + len(stamp)] = stamp
        events: list[nar.NarEvent] = [
            nar.Directory(b""),
            nar.Directory(b"lib"),
            nar.Regular(b"lib/" + sp.name.encode() + b".so", len(data), True),
            nar.Contents(bytes(data)),
        ]
        chunks = export.MemoryChunks()
        m = build.from_nar(
            [nar.encode_bytes(events)],
            sp,
            references=refs,
            policy=SIM_CHUNKING,
            on_chunk=chunks.add,
            workers=0,
        )
        out.append(PathData(m, chunks.chunks))
    return Release(tuple(out))


def lie_about(rng: random.Random, honest: Release) -> Release:
    """What a lying builder signs: the same store paths with other contents."""
    out = []
    for p in honest.paths:
        events: list[nar.NarEvent] = [
            nar.Directory(b""),
            nar.Regular(b"backdoor", 4 * CHUNK, True),
            nar.Contents(rng.randbytes(4 * CHUNK)),
        ]
        chunks = export.MemoryChunks()
        m = build.from_nar(
            [nar.encode_bytes(events)],
            p.manifest.store_path,
            references=p.manifest.references,
            policy=SIM_CHUNKING,
            on_chunk=chunks.add,
            workers=0,
        )
        out.append(PathData(m, chunks.chunks))
    return Release(tuple(out))
