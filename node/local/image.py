"""A stored path as an EROFS metadata image over the store's slabs: file data is not
copied, each chunk index points at the chunk's place in its slab (present or a hole),
so every image of every path shares one copy of each chunk."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from erofs import layout
from erofs.writer import Chunks, Device, Entry, Kind, TreeError, write_image
from node.local.errors import StoreError
from node.local.index import ChunkRow, Index
from store.manifest import EntryKind, Manifest
from store.path import StorePath


class ImageUnsupported(StoreError):
    pass


@dataclass(frozen=True)
class PathImage:
    data: bytes
    devices: tuple[str, ...]  # absolute slab paths, in device-table order: the `device=` options
    inodes: int
    absent_chunks: int  # holes: they read as zeros unless an ondemand backend fills them
    chunks: Mapping[bytes, ChunkRow] = field(
        default_factory=dict, compare=False
    )  # where each chunk lies

    @property
    def mount_options(self) -> str:
        return mount_options(self.devices)


def mount_options(devices: tuple[str, ...]) -> str:
    """mount(2)'s options for an image over these slabs."""
    return ",".join(f"device={d}" for d in devices)


class StoreView(Protocol):
    """What an image is made from: the store itself, or a running node's reader."""

    index: Index
    data_dir: str

    def manifest(self, store_path: StorePath | str) -> Manifest: ...


def image_of(store: StoreView, store_path: StorePath | str) -> PathImage:
    manifest = store.manifest(store_path)
    slabs = store.index.slabs()
    device_of = {row.id: i + 1 for i, row in enumerate(slabs)}
    rows = store.index.chunks(list(set(manifest.chunk_digests())))
    absent = sum(1 for r in rows.values() if not r.present)

    def place(d: bytes) -> tuple[int, int]:
        row = rows.get(d)
        if row is None:
            raise ImageUnsupported(
                f"{store_path}: chunk {d.hex()[:16]} has no place in the store (run `ferry verify`)"
            )
        return device_of[row.slab], row.offset // layout.BLOCK

    devices = [Device(row.name.encode(), -(-row.size // layout.BLOCK)) for row in slabs]
    try:
        data = write_image(entries_of(manifest, place), devices)
    except TreeError as e:
        raise ImageUnsupported(f"{store_path}: {e}") from None
    paths = tuple(os.path.join(store.data_dir, "slabs", row.name) for row in slabs)
    return PathImage(data, paths, len(manifest.entries), absent, rows)


def entries_of(manifest: Manifest, place: Callable[[bytes], tuple[int, int]]) -> list[Entry]:
    """The manifest as the EROFS writer's entries; `place` gives a chunk's (device, block)."""
    if not manifest.entries or manifest.entries[0].kind is not EntryKind.DIRECTORY:
        raise ImageUnsupported(
            f"{manifest.store_path} is a single file or symlink, not a directory: it cannot "
            "be mounted; use `ferry materialize` or `ferry export` for it"
        )
    out = []
    for e in manifest.entries:
        kind = {EntryKind.DIRECTORY: Kind.DIR, EntryKind.SYMLINK: Kind.SYMLINK}.get(
            e.kind, Kind.FILE
        )
        executable = e.kind is EntryKind.EXECUTABLE
        if kind is Kind.FILE and e.chunks:
            chunks = Chunks(manifest.chunking.chunk_size(e.size), tuple(place(d) for d in e.chunks))
            out.append(Entry(e.path, kind, e.size, executable, chunks=chunks))
        else:
            out.append(
                Entry(e.path, kind, e.size if kind is Kind.FILE else 0, executable, data=e.inline)
            )
    return out
