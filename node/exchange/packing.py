"""How a server compresses what it sends: runs of blocks (`p2p.blocks.runs`), at the
strongest level that keeps up with the link, and the compressed forms of runs kept so a
crowd asking for the same runs does not cost the CPU again.

The level follows the link: a run must compress faster than the link carries it, or the
link waits on the compressor. The server measures, per stream, how fast the peer takes
what it is sent (`RunHints.link_rate`), and, per level, how fast it compresses here
(`Packer.speeds`); it picks the strongest level whose speed is LINK_MARGIN times the
link's. A fast link (loopback, a LAN) gets a fast zstd level; a home uplink gets xz.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3

from p2p.blocks import Block, BlockServer, Codec, Packed, Reply, pack

# (codec, level) from fastest to strongest, with what each compresses per second here
# before anything is measured (raw bytes in; measured on 4 MiB runs of Debian packages).
LADDER: tuple[tuple[Codec, int], ...] = (
    (Codec.ZSTD, 1),
    (Codec.ZSTD, 3),
    (Codec.ZSTD, 9),
    (Codec.XZ, 6),
)
PRIOR_SPEED = {
    (Codec.ZSTD, 1): 250e6,
    (Codec.ZSTD, 3): 90e6,
    (Codec.ZSTD, 9): 25e6,
    (Codec.XZ, 6): 2e6,
}
# A level must compress this many times faster than the link carries compressed bytes:
# its output is about a third of its input, and the compressor shares the CPU.
LINK_MARGIN = 1.5
UNMEASURED = (Codec.ZSTD, 3)  # before the link's speed is known
CACHE_BYTES = 64 << 20  # compressed runs kept, node-wide
CACHE_FROM = 4  # runs of fewer blocks are not kept (a lone chunk is cheap to compress)


@dataclass(frozen=True)
class RunHints:
    """What a reply's blocks were asked with: how to cut and compress them."""

    bases: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)  # block -> its want's bases
    have: dict[bytes, bytes] = field(default_factory=dict)  # base digest -> its bytes
    groups: dict[bytes, int] = field(default_factory=dict)  # block -> its WANTS frame
    link_rate: float | None = None  # bytes per second the peer takes, if measured


@dataclass
class Packer:
    """Compresses replies (thread-safe: replies are encoded off the event loop)."""

    diff_level: int = 3
    cache_bytes: int = CACHE_BYTES
    speeds: dict[tuple[Codec, int], float] = field(default_factory=lambda: dict(PRIOR_SPEED))
    hits: int = 0
    _cache: OrderedDict[bytes, tuple[Packed, int]] = field(default_factory=OrderedDict)  # and rung
    _cached: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def level(self, link_rate: float | None) -> tuple[Codec, int]:
        """The strongest (codec, level) that keeps up with a link of `link_rate` bytes/s."""
        if link_rate is None:
            return UNMEASURED
        with self._lock:
            fits = [r for r in LADDER if self.speeds[r] >= LINK_MARGIN * link_rate]
        return fits[-1] if fits else LADDER[0]

    def encode(self, replies: Sequence[Reply], hints: RunHints) -> bytes:
        """The frames answering with `replies`."""
        rung = self.level(hints.link_rate)

        def packer(blocks: list[Block], prefix: bytes) -> Packed:
            return self.pack(blocks, prefix, rung)

        return BlockServer.reply(
            replies, bases=hints.bases, have=hints.have, group=hints.groups, packer=packer
        )

    def pack(self, blocks: list[Block], prefix: bytes, rung: tuple[Codec, int]) -> Packed:
        key = _key(blocks, prefix)
        strength = LADDER.index(rung)
        if len(blocks) >= CACHE_FROM:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and (prefix or hit[1] >= strength):
                    self._cache.move_to_end(key)
                    self.hits += 1
                    return hit[0]
        codec, level = rung
        started = time.perf_counter()
        if prefix:
            packed = pack(blocks, level=self.diff_level, prefix=prefix)
        else:
            packed = pack(blocks, codec=codec, level=level)
        took = time.perf_counter() - started
        size = packed.size
        with self._lock:
            if not prefix and size >= 256 << 10 and took > 0:
                # What this level does on this machine now (other work included).
                self.speeds[rung] = 0.7 * self.speeds[rung] + 0.3 * size / took
            if len(blocks) >= CACHE_FROM:
                self._keep(key, packed, strength)
        return packed

    def _keep(self, key: bytes, packed: Packed, strength: int) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached -= len(old[0].payload)
        self._cache[key] = (packed, strength)
        self._cached += len(packed.payload)
        while self._cached > self.cache_bytes and self._cache:
            _, (gone, _) = self._cache.popitem(last=False)
            self._cached -= len(gone.payload)


def _key(blocks: list[Block], prefix: bytes) -> bytes:
    h = blake3.blake3()
    for b in blocks:
        h.update(b.digest)
    h.update(b"\x00" + blake3.blake3(prefix).digest() if prefix else b"\x01")
    return h.digest()
