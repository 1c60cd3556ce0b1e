"""How a server compresses what it sends: runs of blocks (`p2p.blocks.runs`), at the
level that gets them to the peer soonest, and the compressed forms of runs kept so a
crowd asking for the same runs does not cost the CPU again.

A run reaches the peer when the compressor has made it and the link has carried it: with
the two overlapping, a level costs max(1 / its speed, its ratio / the link's rate) seconds
per raw byte. The server measures, per stream, how fast the peer takes what it is sent
(`RunHints.link_rate`) and, per level, how fast it compresses here and how small
(`Packer.speeds`, `Packer.ratios`); it picks the level with the least cost, the stronger
one on a near tie. A fast link (loopback, a LAN) gets a fast zstd level; a home uplink
gets zstd 9 or xz. Diffs (runs against the requester's older version) have their own
ladder: they shrink a run twenty-fold, so the compressor, not the link, is what the
peer waits for, and zstd 19 is worth it only on a slow link.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import blake3

from p2p.blocks import Block, BlockServer, Codec, Packed, Reply, pack

if TYPE_CHECKING:
    from node.local.packs import PackStore

Rung = tuple[Codec, int]

# (codec, level) from fastest to strongest, with what each does here before anything is
# measured: raw bytes in per second, and compressed size over raw (4 MiB runs of Debian
# packages; diffs: libc.so.6 of two Debian security updates).
LADDER: tuple[Rung, ...] = ((Codec.ZSTD, 1), (Codec.ZSTD, 3), (Codec.ZSTD, 9), (Codec.XZ, 6))
DIFF_LADDER: tuple[Rung, ...] = ((Codec.ZSTD, 3), (Codec.ZSTD, 9), (Codec.ZSTD, 19))
PRIOR_SPEED: dict[tuple[bool, Rung], float] = {
    (False, (Codec.ZSTD, 1)): 250e6,
    (False, (Codec.ZSTD, 3)): 90e6,
    (False, (Codec.ZSTD, 9)): 25e6,
    (False, (Codec.XZ, 6)): 2e6,
    (True, (Codec.ZSTD, 3)): 60e6,
    (True, (Codec.ZSTD, 9)): 20e6,
    (True, (Codec.ZSTD, 19)): 1e6,
}
PRIOR_RATIO: dict[tuple[bool, Rung], float] = {
    (False, (Codec.ZSTD, 1)): 0.40,
    (False, (Codec.ZSTD, 3)): 0.36,
    (False, (Codec.ZSTD, 9)): 0.33,
    (False, (Codec.XZ, 6)): 0.28,
    (True, (Codec.ZSTD, 3)): 0.062,
    (True, (Codec.ZSTD, 9)): 0.058,
    (True, (Codec.ZSTD, 19)): 0.050,
}
NEAR_TIE = 1.1  # a stronger level costing at most this much more time is taken
AHEAD: Rung = (Codec.XZ, 6)  # what runs packed ahead are (`node.local.packs`)
# Raw bytes per second a peer decodes xz at (one core here): a packed run costs the
# server nothing, but on a fast link the peer's decoder is what it waits for.
XZ_DECODE = 30e6
UNMEASURED = (Codec.ZSTD, 3)  # before the link's speed is known (plain runs and diffs)
SAMPLE_FROM = 256 << 10  # runs at least this big update a level's measured speed and ratio
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
    """Compresses replies (thread-safe: replies are encoded off the event loop).
    `diff_level`: the strongest zstd level diffs may use."""

    diff_level: int = 19
    cache_bytes: int = CACHE_BYTES
    packs: PackStore | None = None  # runs packed ahead, answered as they are
    pack_hits: int = 0
    speeds: dict[tuple[bool, Rung], float] = field(default_factory=lambda: dict(PRIOR_SPEED))
    ratios: dict[tuple[bool, Rung], float] = field(default_factory=lambda: dict(PRIOR_RATIO))
    hits: int = 0
    _cache: OrderedDict[bytes, tuple[Packed, int]] = field(default_factory=OrderedDict)  # and rung
    _cached: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ladder(self, diff: bool) -> tuple[Rung, ...]:
        if not diff:
            return LADDER
        rungs = tuple(r for r in DIFF_LADDER if r[1] <= self.diff_level)
        return rungs or ((Codec.ZSTD, self.diff_level),)

    def _costs(self, link_rate: float, diff: bool) -> dict[Rung, float]:
        with self._lock:
            return {
                r: max(
                    1 / self.speeds.get((diff, r), PRIOR_SPEED.get((diff, r), 1e6)),
                    self.ratios.get((diff, r), 0.5) / link_rate,
                )
                for r in self.ladder(diff)
            }

    def level(self, link_rate: float | None, diff: bool = False) -> Rung:
        """The (codec, level) that gets runs to a peer taking `link_rate` bytes/s soonest."""
        ladder = self.ladder(diff)
        if link_rate is None:
            return UNMEASURED if UNMEASURED in ladder else ladder[0]
        cost = self._costs(link_rate, diff)
        best = min(cost.values())
        return [r for r in ladder if cost[r] <= best * NEAR_TIE][-1]

    def answers_with(self, ahead: Packed, link_rate: float | None) -> bool:
        """Whether a run packed ahead gets to a peer taking `link_rate` bytes/s about as
        soon as the best fresh level would: it costs no compression, only the peer's
        decoding. Fresh levels are reckoned on this run's data, from how much smaller
        than xz each level's runs come out. An unmeasured link gets the pack (it is the
        smallest form, and the first reply measures the link)."""
        if link_rate is None:
            return True
        size = ahead.size or 1
        ratio = len(ahead.payload) / size
        with self._lock:
            xz = self.ratios.get((False, AHEAD), PRIOR_RATIO[(False, AHEAD)])
            fresh = min(
                max(
                    1 / self.speeds.get((False, r), PRIOR_SPEED[(False, r)]),
                    ratio * self.ratios.get((False, r), PRIOR_RATIO[(False, r)]) / xz / link_rate,
                )
                for r in LADDER
            )
        return max(ratio / link_rate, 1 / XZ_DECODE) <= fresh * NEAR_TIE

    def encode(self, replies: Sequence[Reply], hints: RunHints) -> bytes:
        """The frames answering with `replies`."""
        plain, diff = self.level(hints.link_rate), self.level(hints.link_rate, diff=True)

        def packer(blocks: list[Block], prefix: bytes) -> Packed:
            if not prefix:
                found = self.packed_ahead(blocks)
                if found is not None and self.answers_with(found, hints.link_rate):
                    with self._lock:
                        self.pack_hits += 1
                    return found
            return self.pack(blocks, prefix, diff if prefix else plain)

        return BlockServer.reply(
            replies, bases=hints.bases, have=hints.have, group=hints.groups, packer=packer
        )

    def pack(self, blocks: list[Block], prefix: bytes, rung: Rung, keep: bool = True) -> Packed:
        """`blocks` as a run at `rung` (against `prefix`: a diff), from the cache if it
        holds them at that level or stronger; `keep`: cache what is made."""
        key = run_key([b.digest for b in blocks], prefix)
        is_diff = bool(prefix)
        ladder = self.ladder(is_diff)
        strength = ladder.index(rung) if rung in ladder else 0
        if len(blocks) >= CACHE_FROM:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit[1] >= strength:
                    self._cache.move_to_end(key)
                    self.hits += 1
                    return hit[0]
        codec, level = rung
        started = time.perf_counter()
        if prefix:
            packed = pack(blocks, level=level, prefix=prefix)
        else:
            packed = pack(blocks, codec=codec, level=level)
        took = time.perf_counter() - started
        size = packed.size
        with self._lock:
            k = (is_diff, rung)
            if size >= SAMPLE_FROM and took > 0 and k in self.speeds:
                # What this level does on this machine now (other work included).
                self.speeds[k] = 0.7 * self.speeds[k] + 0.3 * size / took
                self.ratios[k] = 0.7 * self.ratios[k] + 0.3 * len(packed.payload) / size
            if keep and len(blocks) >= CACHE_FROM:
                self._keep(key, packed, strength)
        return packed

    def packed_ahead(self, blocks: list[Block]) -> Packed | None:
        """`blocks`' pack, if they are a run packed ahead."""
        if self.packs is None or len(blocks) < CACHE_FROM:
            return None
        found = self.packs.get(run_key([b.digest for b in blocks]))
        if found is None or [d for d, _ in found.blocks] != [b.digest for b in blocks]:
            return None
        return found

    def pack_ahead(self, blocks: list[Block]) -> bool:
        """Packs `blocks` (a run) into `packs`, unless it is there; True if it was made.
        Blocking: run it in a thread."""
        if self.packs is None or len(blocks) < CACHE_FROM:
            return False
        key = run_key([b.digest for b in blocks])
        if key in self.packs:
            return False
        packed = self.pack(blocks, b"", AHEAD, keep=False)
        return self.packs.put(key, packed)

    def _keep(self, key: bytes, packed: Packed, strength: int) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached -= len(old[0].payload)
        self._cache[key] = (packed, strength)
        self._cached += len(packed.payload)
        while self._cached > self.cache_bytes and self._cache:
            _, (gone, _) = self._cache.popitem(last=False)
            self._cached -= len(gone.payload)


def run_key(digests: Sequence[bytes], prefix: bytes = b"") -> bytes:
    """What names a run's compressed form: its blocks, in order, and its prefix."""
    h = blake3.blake3()
    for d in digests:
        h.update(d)
    h.update(b"\x00" + blake3.blake3(prefix).digest() if prefix else b"\x01")
    return h.digest()
