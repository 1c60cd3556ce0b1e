"""`/ferry/blocks/1`: the chunk exchange, as sans-io state machines (h11 style).

Every frame (see `p2p.frame`) holds one msgpack array whose first item says what it is:

    [0, [[digest: bin32, block: bool, bases: [bin32, ...]], ...]]   WANTS   client -> server
    [1, [digest: bin32, ...]]                                       CANCEL  client -> server
    [2, [entry, ...]]                                               REPLY   server -> client

    entry = [0, digest, size: uint, zstd: bin]   BLOCK, zstd-compressed on its own
          | [1, digest, size: uint, raw: bin]    BLOCK, sent as is (did not compress)
          | [2, digest]                          HAVE
          | [3, digest]                          DONT_HAVE
          | [4, digest, size: uint, zstd: bin]   BLOCK, zstd-compressed with the want's bases,
                                                 concatenated in order, as a raw-content prefix
          | [5, digest]                          BUSY: held, but not sent now (the server's
                                                 upload goes to others; ask them, or again later)

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
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgpack
import zstandard

from p2p.frame import DEFAULT_CAP, FrameDecoder, FrameError
from p2p.frame import encode as frame

PROTOCOL = "/ferry/blocks/1"
DIGEST = 32
MAX_BLOCK = 4 << 20  # a chunk is at most 1 MiB; a manifest blob may be larger
MAX_BASES = 64
MAX_BASE_BYTES = 16 << 20  # a server ignores bases beyond this (a want cannot buy unbounded CPU)
MAX_WANTS = 4096  # outstanding wants a server holds per stream
REPLY_TARGET = 2 << 20  # the server batches entries into frames of about this size
# A request frame (WANTS, CANCEL) is at most this big: the client splits larger ones, and
# a server holds no more than this of a frame a peer has not finished.
REQUEST_CAP = 1 << 20


class BlocksError(FrameError):
    """The peer broke `/ferry/blocks/1`; close the stream and count it against them."""


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

    def encode(self) -> list[object]:
        return [self.digest, self.block, list(self.bases)]

    @classmethod
    def decode(cls, raw: object) -> Want:
        if not (
            isinstance(raw, list)
            and len(raw) == 3
            and isinstance(raw[1], bool)
            and isinstance(raw[2], list)
        ):
            raise BlocksError("malformed want")
        return cls(_digest(raw[0]), raw[1], tuple(_digest(b) for b in raw[2]))


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
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=_window_log(len(prefix) + len(data)),
        enable_ldm=len(prefix) > (8 << 20),
        write_content_size=True,
    )
    dict_ = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dict_, compression_params=params).compress(data)


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
    _pending: OrderedDict[bytes, Want] = field(default_factory=OrderedDict)
    _waiting: dict[bytes, Want] = field(default_factory=dict)  # want-haves of chunks not here yet

    def receive_data(self, data: bytes) -> list[Wants | Cancel]:
        events: list[Wants | Cancel] = []
        for payload in self._frames.feed(data):
            kind, items = _unpack(payload)
            if kind is Kind.WANTS:
                wants = tuple(Want.decode(w) for w in items)
                for w in wants:
                    self._waiting.pop(w.digest, None)
                    self._pending[w.digest] = w
                if len(self._pending) + len(self._waiting) > self.max_wants:
                    raise BlocksError(f"peer has more than {self.max_wants} wants outstanding")
                events.append(Wants(wants))
            elif kind is Kind.CANCEL:
                digests = tuple(_digest(d) for d in items)
                for d in digests:
                    self._pending.pop(d, None)
                    self._waiting.pop(d, None)
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
        """The next `n` wants to answer (they leave the queue)."""
        out: list[Want] = []
        while self._pending and len(out) < n:
            out.append(self._pending.popitem(last=False)[1])
        return out

    def put_back(self, wants: Sequence[Want]) -> None:
        """Wants taken but not answered (a reply was full): first in line again."""
        for w in reversed(wants):
            if w.digest not in self._pending:
                self._pending[w.digest] = w
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
        entries: Sequence[Reply],
        *,
        level: int = 1,
        dictionaries: dict[bytes, bytes] | None = None,
        diff_level: int = 3,
        target: int = REPLY_TARGET,
    ) -> bytes:
        """Frames (one or more, each about `target` bytes) answering with `entries`,
        those without data first. `dictionaries` maps a block's digest to the
        concatenated bases to compress it against."""
        out: list[bytes] = []
        batch: list[object] = []
        size = 0
        plain = zstandard.ZstdCompressor(level=level)
        for e in sorted(entries, key=lambda e: isinstance(e, Block)):
            if isinstance(e, Block):
                prefix = (dictionaries or {}).get(e.digest)
                if prefix:
                    z = compress_with_prefix(e.data, prefix, diff_level)
                    item: list[object] = [int(Entry.BLOCK_DIFF), e.digest, len(e.data), z]
                else:
                    z = plain.compress(e.data)
                    item = (
                        [int(Entry.BLOCK_ZSTD), e.digest, len(e.data), z]
                        if len(z) < len(e.data)
                        else [int(Entry.BLOCK_RAW), e.digest, len(e.data), e.data]
                    )
                size += len(item[3])  # type: ignore[arg-type]
            elif isinstance(e, Have):
                item = [int(Entry.HAVE), e.digest]
            elif isinstance(e, Busy):
                item = [int(Entry.BUSY), e.digest]
            else:
                item = [int(Entry.DONT_HAVE), e.digest]
            batch.append(item)
            size += DIGEST + 8
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
    _bases: dict[bytes, bytes] = field(default_factory=dict)
    # Wants we cancelled recently: their blocks may already be on the wire.
    _cancelled: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def want(self, wants: Iterable[Want], base_bytes: dict[bytes, bytes] | None = None) -> bytes:
        """`base_bytes`: for wants with bases, the concatenated bases' bytes (the client
        has them) to decompress the answer with."""
        wants = list(wants)
        for w in wants:
            self._outstanding[w.digest] = w
            if w.bases and base_bytes and w.digest in base_bytes:
                self._bases[w.digest] = base_bytes[w.digest]
        out = []
        batch: list[object] = []
        size = 0
        for w in wants:
            cost = DIGEST + 8 + (DIGEST + 2) * len(w.bases)  # its msgpack size, or a little more
            if batch and (len(batch) == MAX_WANTS // 4 or size + cost > REQUEST_CAP // 2):
                out.append(_pack(Kind.WANTS, batch))
                batch, size = [], 0
            batch.append(w.encode())
            size += cost
        if batch:
            out.append(_pack(Kind.WANTS, batch))
        return b"".join(out)

    def cancel(self, digests: Iterable[bytes]) -> bytes:
        ds = [d for d in digests if self._outstanding.pop(d, None) is not None]
        for d in ds:
            self._bases.pop(d, None)
            self._cancelled[d] = None
        while len(self._cancelled) > MAX_WANTS:
            self._cancelled.popitem(last=False)
        return _pack(Kind.CANCEL, ds) if ds else b""  # type: ignore[arg-type]

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def is_outstanding(self, digest: bytes) -> bool:
        return digest in self._outstanding

    def receive_data(self, data: bytes) -> list[Reply]:
        """Replies to outstanding wants (a late answer to a cancelled want is dropped)."""
        out: list[Reply] = []
        for payload in self._frames.feed(data):
            kind, items = _unpack(payload)
            if kind is not Kind.REPLY:
                raise BlocksError("a server sent a request frame")
            for raw in items:
                r = self._entry(raw)
                if r is not None:
                    out.append(r)
        return out

    def end_of_stream(self) -> None:
        self._frames.close()

    def _entry(self, raw: object) -> Reply | None:
        if not (isinstance(raw, list) and raw and type(raw[0]) is int):
            raise BlocksError("malformed reply entry")
        try:
            kind = Entry(raw[0])
        except ValueError:
            raise BlocksError(f"unknown reply entry {raw[0]}") from None
        want_len = 4 if kind in (Entry.BLOCK_ZSTD, Entry.BLOCK_RAW, Entry.BLOCK_DIFF) else 2
        if len(raw) != want_len:
            raise BlocksError("malformed reply entry")
        digest = _digest(raw[1])
        w = self._outstanding.get(digest)
        if w is None:
            # A reply to a want we cancelled may cross the cancel on the wire; anything
            # else we never asked for is an attack.
            if digest in self._cancelled:
                return None
            raise BlocksError(f"unsolicited reply for {digest.hex()[:16]}")
        if kind is Entry.HAVE:
            if w.block:
                raise BlocksError("answered want-block with HAVE")
            del self._outstanding[digest]
            return Have(digest)
        if kind is Entry.BUSY and not w.block:
            raise BlocksError("answered want-have with BUSY")
        del self._outstanding[digest]
        prefix = self._bases.pop(digest, None)
        if kind is Entry.DONT_HAVE:
            return DontHave(digest)
        if kind is Entry.BUSY:
            return Busy(digest)
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
            try:
                declared = zstandard.frame_content_size(payload)
            except zstandard.ZstdError as e:
                raise BlocksError(f"block {digest.hex()[:16]} does not decompress: {e}") from None
            if declared > size:  # refuse before allocating what the header asks for
                raise BlocksError(
                    f"block {digest.hex()[:16]} declares {declared:,} bytes, not {size:,}"
                )
            try:
                data = _decompressor(prefix).decompress(payload, max_output_size=size)
            except zstandard.ZstdError as e:
                if prefix:
                    return BadDiff(digest)
                raise BlocksError(f"block {digest.hex()[:16]} does not decompress: {e}") from None
            if prefix and len(data) != size:
                return BadDiff(digest)
        if len(data) != size:
            raise BlocksError(
                f"block {digest.hex()[:16]} is {len(data):,} bytes, not the {size:,} it claims"
            )
        return Block(digest, data, len(payload), kind is Entry.BLOCK_DIFF)
