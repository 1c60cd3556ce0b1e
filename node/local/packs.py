"""Runs packed ahead: the xz form of a published path's runs, kept on disk.

A binary cache compresses a NAR once, when it is uploaded, and serves those bytes to
every client: strong compression costs its CPU once. A ferry server compresses replies
as it sends them, at the level that gets them to the peer soonest; on a home link that
is zstd 9, since xz makes about 2 MB/s, slower than the link carries it, and a cold
fetch cost 1.3-1.6x nar.xz. So a builder packs what it publishes ahead, in the
background: each path's runs as a client holding none of the path asks for them
(`node.exchange.schedule.cold_runs`), each compressed with xz -6, and a server answers
such a run with its pack, at no CPU (`node.exchange.packing`).

On disk, one file per run, `<data dir>/packs/<run key, hex>`:

    msgpack [1, codec: uint, [[digest: bin32, size: uint], ...], payload: bin]

written under a temporary name and renamed, so a crash leaves a whole pack or none. The
store's size is capped (`pack_ahead`); packs are a cache, so one that does not decode is
deleted and forgotten, and when the cap is reached the oldest go first.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import msgpack

from p2p.blocks import DIGEST, MAX_BLOCK, RUN_CAP, Codec, Packed

log = logging.getLogger(__name__)

VERSION = 1
MAX_FILE = RUN_CAP + (1 << 20)  # a pack never compresses to much more than its run


class PackError(ValueError):
    """A pack file that is not one (damaged, or from another version): it is dropped."""


@dataclass(frozen=True)
class PackFile:
    packed: Packed

    def encode(self) -> bytes:
        p = self.packed
        return msgpack.packb(
            [VERSION, int(p.codec), [[d, n] for d, n in p.blocks], p.payload], use_bin_type=True
        )

    @classmethod
    def decode(cls, data: bytes) -> PackFile:
        if len(data) > MAX_FILE:
            raise PackError(f"a pack file of {len(data)} bytes is larger than any pack")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise PackError(f"not a pack file: {e}") from None
        if not (isinstance(raw, list) and len(raw) == 4 and raw[0] == VERSION):
            raise PackError("not a version-1 pack file")
        _, codec, listed, payload = raw
        if not isinstance(codec, int) or codec not in {int(c) for c in Codec}:
            raise PackError(f"unknown codec {codec!r}")
        if not isinstance(listed, list) or not listed or not isinstance(payload, bytes):
            raise PackError("a pack lists its blocks and holds a payload")
        blocks: list[tuple[bytes, int]] = []
        for item in listed:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], bytes)
                and len(item[0]) == DIGEST
                and isinstance(item[1], int)
                and not isinstance(item[1], bool)
                and 0 <= item[1] <= MAX_BLOCK
            ):
                raise PackError("a pack's block is listed as [digest, size]")
            blocks.append((item[0], item[1]))
        if sum(n for _, n in blocks) > RUN_CAP:
            raise PackError("a pack holds more than a run")
        return cls(Packed(tuple(blocks), Codec(codec), payload))


class PackStore:
    """The packs directory (thread-safe: servers read packs off the event loop).
    `cap`: bytes of packs kept, at most; 0 keeps none."""

    def __init__(self, root: str | os.PathLike[str], cap: int) -> None:
        self.root = Path(root)
        self.cap = cap
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[str, int] = {}  # name -> bytes, oldest first
        found = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # a write a crash interrupted
                continue
            st = entry.stat()
            found.append((st.st_mtime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._sizes[name] = size
        self.bytes = sum(self._sizes.values())

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key.hex() in self._sizes

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    def get(self, key: bytes) -> Packed | None:
        name = key.hex()
        with self._lock:
            if name not in self._sizes:
                return None
        try:
            return PackFile.decode((self.root / name).read_bytes()).packed
        except FileNotFoundError:
            self._forget(name)
        except PackError as e:
            log.warning("dropping pack %s: %s", name, e)
            self._forget(name)
            (self.root / name).unlink(missing_ok=True)
        return None

    def put(self, key: bytes, packed: Packed) -> bool:
        """Keeps `packed` under `key`, dropping the oldest packs to stay under the cap;
        False if it is larger than the cap."""
        data = PackFile(packed).encode()
        if len(data) > self.cap:
            return False
        name = key.hex()
        tmp = self.root / f"{name}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.root / name)
        with self._lock:
            self.bytes += len(data) - self._sizes.pop(name, 0)
            self._sizes[name] = len(data)
            while self.bytes > self.cap:
                old = next(iter(self._sizes))
                self.bytes -= self._sizes.pop(old)
                (self.root / old).unlink(missing_ok=True)
        return True

    def _forget(self, name: str) -> None:
        with self._lock:
            self.bytes -= self._sizes.pop(name, 0)
