"""`/ferry/blocks/2`: the chunk exchange, as sans-io state machines (h11 style).

Every frame (see `p2p.frame`) holds one msgpack array whose first item says what it is:

    [0, [[digest: bin32, block: bool, bases: [base, ...]], ...]]    WANTS   client -> server
    [1, [digest: bin32, ...]]                                       CANCEL  client -> server
    [2, [entry, ...]]                                               REPLY   server -> client

    base = bin32 (a digest, the frame's next base) | uint (the frame's i-th base, from 0):
    consecutive chunks' bases overlap, and a digest is 34 bytes where an index is 1 or 2

    entry = [0, digest, size: uint, zstd: bin]   BLOCK, zstd-compressed on its own
          | [1, digest, size: uint, raw: bin]    BLOCK, sent as is (did not compress)
          | [2, digest]                          HAVE
          | [3, digest]                          DONT_HAVE
          | [4, digest, size: uint, zstd: bin]   BLOCK, zstd-compressed with the want's bases,
                                                 concatenated in order, as a raw-content prefix
          | [5, digest]                          BUSY: held, but not sent now (the server's
                                                 upload goes to others; ask them, or again later)
          | [6, codec: uint, [[digest, size], ...], payload: bin]
                                                 RUN: blocks compressed together, as one zstd
                                                 (codec 0) or xz (codec 1) stream of their
                                                 concatenation, in the listed order
          | [7, [[digest, size], ...], zstd: bin] RUN against bases: one zstd frame of the
                                                 concatenation, with the listed wants' bases
                                                 (each once, in order: `run_bases`) as prefix

Blocks asked for in one WANTS frame travel together where they can: consecutive chunks of
a file compress far better as one stream than one by one (a 64 KiB chunk alone gives zstd
little to match against), and a server can cache the compressed form of a run a crowd
asks for. A server keeps a frame's wants together when it takes them from its queue.

A want may list bases: chunks the client holds (an older version of the same file). A
server that has all of them (within MAX_BASE_BYTES) answers with a diff (4); one that
lacks any says so by answering plainly (0 or 1).

Requests are pipelined on one stream: a client may send many WANTS frames before any
reply and the server answers in any order. A want-have (block false) of a chunk the
server lacks stays pending until the server gets it (then HAVE) or the client cancels
it: a subscription, which is how fetchers of the same closure learn what to trade
(DONT_HAVE answers a want-block at once). BUSY answers only a want-block: the server
holds the chunk but gives its uplink to other peers now (see `node.exchange.uplink`); the
client asks others first and this server again after a pause. Within a reply, entries
without data come first, so a refusal is not queued behind blocks. `BlockServer` enforces the per-peer limit on
outstanding wants; `BlockClient` refuses replies it did not ask for, blocks larger than
the cap, and blocks that decompress to another size than they claim. Neither checks a
block's digest: that is the fetcher's job, which knows whom to blame.
"""

from __future__ import annotations

import enum
import lzma
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import zstandard

from p2p.frame import DEFAULT_CAP, FrameDecoder, FrameError
from p2p.frame import encode as frame

PROTOCOL = "/ferry/blocks/2"
DIGEST = 32
MAX_BLOCK = 4 << 20  # a chunk is at most 1 MiB; a manifest blob may be larger
MAX_BASES = 64
MAX_BASE_BYTES = 16 << 20  # a server ignores bases beyond this (a want cannot buy unbounded CPU)
MAX_WANTS = 4096  # outstanding wants a server holds per stream
MAX_RUN = 8 << 20  # bytes a RUN decompresses to, at most
RUN_CAP = 4 << 20  # a server packs runs of at most this many bytes (and the client asks so)
MAX_XZ_MEMORY = 32 << 20  # an xz run needing more to decode is refused (preset 6 needs 9 MiB)
REPLY_TARGET = 2 << 20  # the server batches entries into frames of about this size
# A request frame (WANTS, CANCEL) is at most this big: the client splits larger ones, and
# a server holds no more than this of a frame a peer has not finished.
REQUEST_CAP = 1 << 20


class BlocksError(FrameError):
    """The peer broke `/ferry/blocks/2`; close the stream and count it against them."""


class Kind(enum.IntEnum):
    WANTS = 0
    CANCEL = 1
    REPLY = 2


class Entry(enum.IntEnum):
    BLOCK_ZSTD = 0
    BLOCK_RAW = 1
    HAVE = 2
    DONT_HAVE = 3
    BLOCK_DIFF = 4
    BUSY = 5
    RUN = 6
    RUN_DIFF = 7


class Codec(enum.IntEnum):
    ZSTD = 0
    XZ = 1


@dataclass(frozen=True, slots=True)
class Want:
    digest: bytes
    block: bool = True  # False: want-have, only ask whether the peer holds it
    bases: tuple[bytes, ...] = ()  # digests the requester holds, usable as a zstd prefix

    def __post_init__(self) -> None:
        _check_digest(self.digest)
        if len(self.bases) > MAX_BASES:
            raise BlocksError(
                f"a want lists {len(self.bases)} bases; at most {MAX_BASES} are allowed"
            )
        for b in self.bases:
            _check_digest(b)

    def encode(self, table: dict[bytes, int] | None = None) -> list[object]:
        """With `table` (the frame's bases so far, each with its index; updated here), a
        base already in it is sent as its index."""
        if table is None:
            return [self.digest, self.block, list(self.bases)]
        refs: list[object] = []
        for b in self.bases:
            i = table.get(b)
            if i is None:
                table[b] = len(table)
                refs.append(b)
            else:
                refs.append(i)
        return [self.digest, self.block, refs]

    @classmethod
    def decode(cls, raw: object, table: list[bytes] | None = None) -> Want:
        """`table`: the frame's bases so far, in order (new ones are appended)."""
        if not (
            isinstance(raw, list)
            and len(raw) == 3
            and isinstance(raw[1], bool)
            and isinstance(raw[2], list)
        ):
            raise BlocksError("malformed want")
        bases = []
        for b in raw[2]:
            if type(b) is int and table is not None:
                if not 0 <= b < len(table):
                    raise BlocksError(
                        f"a want refers to base {b} of a frame that listed {len(table)}"
                    )
                bases.append(table[b])
            else:
                d = _digest(b)
                if table is not None:
                    table.append(d)
                bases.append(d)
        return cls(_digest(raw[0]), raw[1], tuple(bases))


@dataclass(frozen=True, slots=True)
class Block:
    digest: bytes
    data: bytes
    # How it travelled, not what it is: left out of comparisons.
    wire: int = field(
        default=0, compare=False
    )  # payload bytes on the wire (compressed, perhaps a diff)
    diff: bool = field(default=False, compare=False)  # decoded against the bases the client sent


@dataclass(frozen=True, slots=True)
class Have:
    digest: bytes


@dataclass(frozen=True, slots=True)
class DontHave:
    digest: bytes


@dataclass(frozen=True, slots=True)
class Busy:
    """The server holds the chunk but will not send it now: ask another peer first."""

    digest: bytes


@dataclass(frozen=True, slots=True)
class BadDiff:
    """A block sent against bases that does not decode with them: the client asks again
    for it plain (a server whose base differs from ours, or a liar: the plain answer's
    hash decides)."""

    digest: bytes


Reply = Block | Have | DontHave | Busy | BadDiff


@dataclass(frozen=True, slots=True)
class Wants:
    wants: tuple[Want, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    digests: tuple[bytes, ...]


def _window_log(n: int) -> int:
    """A zstd window covering `n` bytes (a prefix and the block after it)."""
    return max(zstandard.WINDOWLOG_MIN, min(zstandard.WINDOWLOG_MAX, (n - 1).bit_length()))


def compress_with_prefix(data: bytes, prefix: bytes, level: int) -> bytes:
    """`data` compressed with `prefix` as raw content before it: matches reach back into
    the prefix (an older version of the same bytes) across the whole window."""
    # zstd indexes only the last 1 << (hash_log + 3) bytes of a dictionary: a run's
    # bases (up to MAX_BASE_BYTES) need a larger table than a fast level has.
    hash_log = max(
        zstandard.ZstdCompressionParameters.from_level(level).hash_log,
        min(26, (len(prefix) - 1).bit_length() - 3),
    )
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=_window_log(len(prefix) + len(data)),
        hash_log=hash_log,
        enable_ldm=len(prefix) > (8 << 20),
        write_content_size=True,
    )
    dict_ = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dict_, compression_params=params).compress(data)


@dataclass(frozen=True, slots=True)
class Packed:
    """Blocks that travel as one compressed payload: a run."""

    blocks: tuple[tuple[bytes, int], ...]  # (digest, size), in the payload's order
    codec: Codec
    payload: bytes
    diff: bool = False  # zstd against the run's bases (`run_bases`) as a prefix
    raw: bool = False  # a lone block that did not compress, sent as is

    @property
    def size(self) -> int:
        return sum(n for _, n in self.blocks)

    def entry(self) -> list[object]:
        listed = [[d, n] for d, n in self.blocks]
        if self.diff:
            return [int(Entry.RUN_DIFF), listed, self.payload]
        if len(self.blocks) == 1 and self.codec is Codec.ZSTD:
            ((d, n),) = self.blocks
            return [int(Entry.BLOCK_RAW if self.raw else Entry.BLOCK_ZSTD), d, n, self.payload]
        return [int(Entry.RUN), int(self.codec), listed, self.payload]


def run_bases(members: Iterable[Want]) -> list[bytes]:
    """The bases a RUN_DIFF is compressed against: each member's, each base once, in order."""
    seen: dict[bytes, None] = {}
    for w in members:
        for b in w.bases:
            seen.setdefault(b, None)
    return list(seen)


def pack(
    blocks: Sequence[Block], *, codec: Codec = Codec.ZSTD, level: int = 3, prefix: bytes = b""
) -> Packed:
    """`blocks` as one run: `prefix` (their bases, concatenated by `run_bases`) makes it a
    diff, which is always zstd. A lone block that does not compress travels raw."""
    data = b"".join(b.data for b in blocks)
    listed = tuple((b.digest, len(b.data)) for b in blocks)
    if prefix:
        return Packed(listed, Codec.ZSTD, compress_with_prefix(data, prefix, level), diff=True)
    if codec is Codec.XZ:
        z = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=level)
    else:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=_window_log(len(data) or 1), write_content_size=True
        )
        z = zstandard.ZstdCompressor(compression_params=params).compress(data)
        if len(blocks) == 1 and len(z) >= len(data):
            return Packed(listed, codec, data, raw=True)
    return Packed(listed, codec, z)


def runs(
    blocks: Sequence[Block],
    bases: Mapping[bytes, tuple[bytes, ...]],
    have: Mapping[bytes, bytes],
    group: Mapping[bytes, int] | None = None,
) -> list[tuple[list[Block], bytes]]:
    """`blocks` cut into runs, each with the prefix to compress it against (b"": none):
    consecutive blocks of one `group` (their WANTS frame) whose bases are all in `have`
    form diff runs, the others plain runs, each run at most RUN_CAP bytes and its bases
    at most MAX_BASE_BYTES."""
    out: list[tuple[list[Block], bytes]] = []
    cur: list[Block] = []
    cur_bases: dict[bytes, None] = {}
    size = base_size = 0
    diff = False
    last_group = None

    def flush() -> None:
        if cur:
            out.append((list(cur), b"".join(have[b] for b in cur_bases)))

    for b in blocks:
        mine = bases.get(b.digest, ())
        d = bool(mine) and all(x in have for x in mine)
        extra = [x for x in dict.fromkeys(mine) if x not in cur_bases] if d else []
        grown = base_size + sum(len(have[x]) for x in extra)
        if d and sum(len(have[x]) for x in dict.fromkeys(mine)) > MAX_BASE_BYTES:
            d, extra, grown = False, [], base_size
        g = group.get(b.digest) if group is not None else None
        if cur and (
            d != diff or g != last_group or size + len(b.data) > RUN_CAP or grown > MAX_BASE_BYTES
        ):
            flush()
            cur, cur_bases, size, base_size = [], {}, 0, 0
            extra = list(dict.fromkeys(mine)) if d else []
            grown = sum(len(have[x]) for x in extra)
        diff, last_group = d, g
        cur.append(b)
        size += len(b.data)
        cur_bases.update(dict.fromkeys(extra))
        base_size = grown
    flush()
    return out


def _decompressor(prefix: bytes | None) -> zstandard.ZstdDecompressor:
    if not prefix:
        return zstandard.ZstdDecompressor()
    dict_ = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(
        dict_data=dict_, max_window_size=1 << _window_log(len(prefix) + MAX_BLOCK)
    )


def _check_digest(d: object) -> None:
    if not (isinstance(d, bytes) and len(d) == DIGEST):
        raise BlocksError(f"a digest must be {DIGEST} bytes")


def _digest(raw: object) -> bytes:
    _check_digest(raw)
    return raw  # type: ignore[return-value]


def _unpack(payload: bytes) -> tuple[Kind, list[object]]:
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=DEFAULT_CAP,
            max_str_len=0,
            max_map_len=0,
            max_ext_len=0,
            max_array_len=max(MAX_WANTS, MAX_BASES) + 3,
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises many unrelated types for bad input
        raise BlocksError(f"frame is not valid msgpack: {e}") from None
    if not (
        isinstance(obj, list) and len(obj) == 2 and type(obj[0]) is int and isinstance(obj[1], list)
    ):
        raise BlocksError("frame is not [kind, items]")
    try:
        return Kind(obj[0]), obj[1]
    except ValueError:
        raise BlocksError(f"unknown frame kind {obj[0]}") from None


def _pack(kind: Kind, items: list[object]) -> bytes:
    return frame(msgpack.packb([int(kind), items], use_bin_type=True))


@dataclass
class BlockServer:
    """One inbound stream. Feed it bytes; it keeps the wants to serve in arrival order
    (a cancel removes them) and turns answers into frames."""

    max_wants: int = MAX_WANTS
    _frames: FrameDecoder = field(default_factory=lambda: FrameDecoder(REQUEST_CAP))
    _pending: OrderedDict[bytes, tuple[Want, int]] = field(default_factory=OrderedDict)
    _waiting: dict[bytes, Want] = field(default_factory=dict)  # want-haves of chunks not here yet
    _frame_no: int = 0
    # Wants taken and not yet answered -> cancelled since: a cancel that arrives while
    # their reply is being read and compressed still keeps them off the wire.
    _taken: dict[bytes, bool] = field(default_factory=dict)
    groups: dict[bytes, int] = field(default_factory=dict)  # of the last `take`: digest -> frame

    def receive_data(self, data: bytes) -> list[Wants | Cancel]:
        events: list[Wants | Cancel] = []
        for payload in self._frames.feed(data):
            kind, items = _unpack(payload)
            if kind is Kind.WANTS:
                table: list[bytes] = []
                wants = tuple(Want.decode(w, table) for w in items)
                self._frame_no += 1
                for w in wants:
                    self._waiting.pop(w.digest, None)
                    self._pending[w.digest] = (w, self._frame_no)
                if len(self._pending) + len(self._waiting) > self.max_wants:
                    raise BlocksError(f"peer has more than {self.max_wants} wants outstanding")
                events.append(Wants(wants))
            elif kind is Kind.CANCEL:
                digests = tuple(_digest(d) for d in items)
                for d in digests:
                    self._pending.pop(d, None)
                    self._waiting.pop(d, None)
                    if d in self._taken:
                        self._taken[d] = True
                events.append(Cancel(digests))
            else:
                raise BlocksError("a client sent a reply frame")
        return events

    def end_of_stream(self) -> None:
        self._frames.close()

    @property
    def mid_frame(self) -> bool:
        """Whether part of a frame has arrived and the rest has not."""
        return self._frames.mid_frame

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self, n: int) -> list[Want]:
        """The next wants to answer, at most `n` (they leave the queue): whole WANTS
        frames where they fit, so what was asked together is answered together
        (`groups` says which frame each came from)."""
        out: list[Want] = []
        self.groups = {}
        while self._pending and len(out) < n:
            digest, (w, g) = next(iter(self._pending.items()))
            if out and g != self.groups[out[-1].digest]:
                left = sum(1 for _ in self._group_from(g, n - len(out) + 1))
                if left > n - len(out):
                    break  # the next frame does not fit whole: it starts the next reply
            del self._pending[digest]
            out.append(w)
            self.groups[digest] = g
        for w in out:
            self._taken[w.digest] = False
        return out

    def _group_from(self, g: int, limit: int) -> Iterable[None]:
        for i, (_, gg) in enumerate(self._pending.values()):
            if gg != g or i >= limit:
                return
            yield None

    def cancelled(self, wants: Iterable[Want]) -> set[bytes]:
        """Of wants taken, those the client cancelled since."""
        return {w.digest for w in wants if self._taken.get(w.digest)}

    def answered(self, wants: Iterable[Want]) -> None:
        for w in wants:
            self._taken.pop(w.digest, None)

    def put_back(self, wants: Sequence[Want]) -> None:
        """Wants taken but not answered (a reply was full): first in line again."""
        for w in reversed(wants):
            cancelled = self._taken.pop(w.digest, False)
            if w.digest not in self._pending and not cancelled:
                self._pending[w.digest] = (w, self.groups.get(w.digest, 0))
                self._pending.move_to_end(w.digest, last=False)

    def wait(self, wants: Iterable[Want]) -> None:
        """Want-haves of chunks the server lacks: kept until `arrived` or cancelled."""
        for w in wants:
            if w.block:
                raise ValueError("only a want-have waits; a want-block is answered DONT_HAVE")
            self._waiting[w.digest] = w

    @property
    def waiting(self) -> list[bytes]:
        return list(self._waiting)

    def arrived(self, digests: Iterable[bytes]) -> list[Have]:
        """Of the waiting want-haves, those for `digests` (now here), as replies."""
        return [Have(d) for d in digests if self._waiting.pop(d, None) is not None]

    @staticmethod
    def reply(
        entries: Sequence[Reply | Packed],
        *,
        level: int = 3,
        diff_level: int = 3,
        bases: Mapping[bytes, tuple[bytes, ...]] | None = None,
        have: Mapping[bytes, bytes] | None = None,
        group: Mapping[bytes, int] | None = None,
        packer: Callable[[list[Block], bytes], Packed] | None = None,
        target: int = REPLY_TARGET,
    ) -> bytes:
        """Frames (one or more, each about `target` bytes) answering with `entries`,
        those without data first. Blocks go out in runs (see `runs`): `bases` maps a
        block's digest to the bases its want listed, `have` a base's digest to its bytes,
        `group` a block's digest to its WANTS frame; `packer(blocks, prefix)` compresses
        a run (by default `pack` at `level`, or `diff_level` with a prefix)."""

        def default(blocks: list[Block], prefix: bytes) -> Packed:
            return pack(blocks, level=diff_level if prefix else level, prefix=prefix)

        items: list[list[object]] = []  # refusals and notices first: not queued behind data
        data: list[list[object]] = []
        blocks: list[Block] = []
        for e in entries:
            if isinstance(e, Block):
                blocks.append(e)
            elif isinstance(e, Packed):
                data.append(e.entry())
            elif isinstance(e, Have):
                items.append([int(Entry.HAVE), e.digest])
            elif isinstance(e, Busy):
                items.append([int(Entry.BUSY), e.digest])
            elif isinstance(e, DontHave):
                items.append([int(Entry.DONT_HAVE), e.digest])
        for run, prefix in runs(blocks, bases or {}, have or {}, group):
            data.append((packer or default)(run, prefix).entry())
        items += data
        out: list[bytes] = []
        batch: list[object] = []
        size = 0
        for item in items:
            batch.append(item)
            size += DIGEST + 8 + (len(item[-1]) if isinstance(item[-1], bytes) else 0)
            if size >= target:
                out.append(_pack(Kind.REPLY, batch))
                batch, size = [], 0
        if batch:
            out.append(_pack(Kind.REPLY, batch))
        return b"".join(out)


@dataclass
class BlockClient:
    """One outbound stream. `want` and `cancel` return the bytes to send; `receive_data`
    returns the replies, each matched to an outstanding want."""

    max_block: int = MAX_BLOCK
    _frames: FrameDecoder = field(default_factory=FrameDecoder)
    _outstanding: dict[bytes, Want] = field(default_factory=dict)
    # Of wants with bases: the bases' bytes, in the want's order (a diff decodes with them).
    _bases: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    # Wants we cancelled recently: their blocks may already be on the wire.
    _cancelled: OrderedDict[bytes, Want] = field(default_factory=OrderedDict)
    late_bytes: int = 0  # payload bytes of blocks that came after we cancelled them

    def want(
        self,
        wants: Iterable[Want],
        base_bytes: Mapping[bytes, bytes] | None = None,
        *,
        groups: Iterable[int] | None = None,
    ) -> bytes:
        """`base_bytes`: the bytes of the bases the wants list (by base digest; the
        client holds them), to decode diffs with. `groups`, one per want: wants of one
        group go in one frame (what is asked together is packed together); by default
        all are one group."""
        wants = list(wants)
        marks = list(groups) if groups is not None else [0] * len(wants)
        if len(marks) != len(wants):
            raise ValueError("one group per want")
        for w in wants:
            self._outstanding[w.digest] = w
            if w.bases and base_bytes is not None and all(b in base_bytes for b in w.bases):
                self._bases[w.digest] = tuple(base_bytes[b] for b in w.bases)
        out = []
        batch: list[object] = []
        table: dict[bytes, int] = {}  # the frame's bases, by index
        size = 0
        last = None
        for w, g in zip(wants, marks, strict=True):
            cost = DIGEST + 8 + (DIGEST + 2) * len(w.bases)  # its msgpack size, or a little more
            if batch and (
                g != last or len(batch) == MAX_WANTS // 4 or size + cost > REQUEST_CAP // 2
            ):
                out.append(_pack(Kind.WANTS, batch))
                batch, size, table = [], 0, {}
            batch.append(w.encode(table))
            size += cost
            last = g
        if batch:
            out.append(_pack(Kind.WANTS, batch))
        return b"".join(out)

    def cancel(self, digests: Iterable[bytes]) -> bytes:
        ds = []
        for d in digests:
            w = self._outstanding.pop(d, None)
            if w is not None:
                ds.append(d)
                self._cancelled[d] = w
        while len(self._cancelled) > MAX_WANTS:
            gone, _ = self._cancelled.popitem(last=False)
            self._bases.pop(gone, None)
        return _pack(Kind.CANCEL, ds) if ds else b""  # type: ignore[arg-type]

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def is_outstanding(self, digest: bytes) -> bool:
        return digest in self._outstanding

    def receive_data(self, data: bytes) -> list[Reply]:
        """Replies to outstanding wants (a late answer to a cancelled want is dropped,
        and its bytes counted in `late_bytes`)."""
        out: list[Reply] = []
        for payload in self._frames.feed(data):
            kind, items = _unpack(payload)
            if kind is not Kind.REPLY:
                raise BlocksError("a server sent a request frame")
            for raw in items:
                out.extend(self._entry(raw))
        return out

    def end_of_stream(self) -> None:
        self._frames.close()

    def _asked(self, digest: bytes) -> Want | None:
        """The want `digest` answers: outstanding, or cancelled (None); else an attack."""
        w = self._outstanding.get(digest)
        if w is not None:
            return w
        # A reply to a want we cancelled may cross the cancel on the wire; anything else
        # we never asked for is an attack.
        if digest in self._cancelled:
            return None
        raise BlocksError(f"unsolicited reply for {digest.hex()[:16]}")

    def _entry(self, raw: object) -> list[Reply]:
        if not (isinstance(raw, list) and raw and type(raw[0]) is int):
            raise BlocksError("malformed reply entry")
        try:
            kind = Entry(raw[0])
        except ValueError:
            raise BlocksError(f"unknown reply entry {raw[0]}") from None
        if kind in (Entry.RUN, Entry.RUN_DIFF):
            return self._run(kind, raw)
        want_len = 4 if kind in (Entry.BLOCK_ZSTD, Entry.BLOCK_RAW, Entry.BLOCK_DIFF) else 2
        if len(raw) != want_len:
            raise BlocksError("malformed reply entry")
        digest = _digest(raw[1])
        w = self._asked(digest)
        if w is None:
            if want_len == 4 and isinstance(raw[3], bytes):
                self.late_bytes += len(raw[3])
            return []
        if kind is Entry.HAVE:
            if w.block:
                raise BlocksError("answered want-block with HAVE")
            del self._outstanding[digest]
            return [Have(digest)]
        if kind is Entry.BUSY and not w.block:
            raise BlocksError("answered want-have with BUSY")
        del self._outstanding[digest]
        bases = self._bases.pop(digest, None)
        prefix = b"".join(bases) if bases else None
        if kind is Entry.DONT_HAVE:
            return [DontHave(digest)]
        if kind is Entry.BUSY:
            return [Busy(digest)]
        if kind is Entry.BLOCK_DIFF and not prefix:
            raise BlocksError(f"a diff for {digest.hex()[:16]}, which was asked for without bases")
        if kind is not Entry.BLOCK_DIFF:
            prefix = None  # answered plainly: the server lacked a base
        size, payload = raw[2], raw[3]
        if not (type(size) is int and 0 <= size <= self.max_block and isinstance(payload, bytes)):
            raise BlocksError(
                f"block {digest.hex()[:16]} claims {size!r} bytes (limit {self.max_block:,})"
            )
        if kind is Entry.BLOCK_RAW:
            data = payload
        else:
            data_or_bad = _unzstd(payload, size, prefix, what=f"block {digest.hex()[:16]}")
            if data_or_bad is None:
                return [BadDiff(digest)]
            data = data_or_bad
        if len(data) != size:
            raise BlocksError(
                f"block {digest.hex()[:16]} is {len(data):,} bytes, not the {size:,} it claims"
            )
        return [Block(digest, data, len(payload), kind is Entry.BLOCK_DIFF)]

    def _run(self, kind: Entry, raw: list[object]) -> list[Reply]:
        diff = kind is Entry.RUN_DIFF
        if len(raw) != (3 if diff else 4):
            raise BlocksError("malformed run entry")
        codec_raw = int(Codec.ZSTD) if diff else raw[1]
        listed, payload = raw[-2], raw[-1]
        if not (isinstance(listed, list) and listed and isinstance(payload, bytes)):
            raise BlocksError("malformed run entry")
        try:
            if type(codec_raw) is not int:
                raise ValueError
            codec = Codec(codec_raw)
        except ValueError:
            raise BlocksError(f"unknown run codec {codec_raw!r}") from None
        members: list[tuple[bytes, int, Want | None]] = []
        total = 0
        for item in listed:
            if not (isinstance(item, list) and len(item) == 2 and type(item[1]) is int):
                raise BlocksError("malformed run member")
            digest, size = _digest(item[0]), item[1]
            if not 0 <= size <= self.max_block:
                raise BlocksError(
                    f"block {digest.hex()[:16]} claims {size:,} bytes (limit {self.max_block:,})"
                )
            w = self._asked(digest)
            if w is not None and not w.block:
                raise BlocksError("answered a want-have with a block")
            if any(d == digest for d, _, _ in members):
                raise BlocksError(f"a run lists {digest.hex()[:16]} twice")
            members.append((digest, size, w))
            total += size
        if total > MAX_RUN:
            raise BlocksError(f"a run of {total:,} bytes (limit {MAX_RUN:,})")
        what = f"a run of {len(members)} blocks from {members[0][0].hex()[:16]}"
        prefix = None
        if diff:
            prefix = self._run_prefix([d for d, _, _ in members])
            if prefix is None:
                raise BlocksError(f"{what} is a diff, but its blocks were asked for without bases")
        data: bytes | None
        if codec is Codec.XZ:
            data = _unxz(payload, total, what)
        else:
            data = _unzstd(payload, total, prefix, what=what)
        out: list[Reply] = []
        offset = 0
        for digest, size, w in members:
            share = len(payload) * size // max(1, total)
            piece = data[offset : offset + size] if data is not None else None
            offset += size
            if w is None:
                self.late_bytes += share
                continue
            del self._outstanding[digest]
            self._bases.pop(digest, None)
            out.append(BadDiff(digest) if piece is None else Block(digest, piece, share, diff))
        if data is not None and len(data) != total:
            if diff:
                return [BadDiff(r.digest) for r in out]
            raise BlocksError(f"{what} is {len(data):,} bytes, not the {total:,} it claims")
        return out

    def _run_prefix(self, digests: list[bytes]) -> bytes | None:
        """What a RUN_DIFF of `digests` decodes against: `run_bases` of their wants."""
        known: dict[bytes, bytes] = {}
        wants = []
        for d in digests:
            w = self._outstanding.get(d) or self._cancelled.get(d)
            mine = self._bases.get(d)
            if w is None or not w.bases or mine is None:
                return None
            wants.append(w)
            known.update(zip(w.bases, mine, strict=True))
        return b"".join(known[b] for b in run_bases(wants))


def _unzstd(payload: bytes, size: int, prefix: bytes | None, *, what: str) -> bytes | None:
    """`payload` decompressed (with `prefix`), at most `size` bytes; None for a diff that
    does not decode (the client's bases may differ from the server's)."""
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise BlocksError(f"{what} does not decompress: {e}") from None
    if declared > size:  # refuse before allocating what the header asks for
        raise BlocksError(f"{what} declares {declared:,} bytes, not {size:,}")
    try:
        data = _decompressor(prefix).decompress(payload, max_output_size=size)
    except zstandard.ZstdError as e:
        if prefix:
            return None
        raise BlocksError(f"{what} does not decompress: {e}") from None
    if prefix and len(data) != size:
        return None
    return data


def _unxz(payload: bytes, size: int, what: str) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MAX_XZ_MEMORY)
    try:
        data = d.decompress(payload, max_length=size + 1)
    except lzma.LZMAError as e:
        raise BlocksError(f"{what} does not decompress: {e}") from None
    if not d.eof or len(data) != size or d.unused_data:
        raise BlocksError(f"{what} does not decompress to the {size:,} bytes it claims")
    return data
