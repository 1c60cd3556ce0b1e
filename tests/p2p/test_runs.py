"""Runs: blocks asked for in one WANTS frame travel as one compressed stream (zstd or xz,
or zstd against the union of their bases), decode to exactly the blocks, and are checked
as strictly as single blocks. Driven without I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.exchange.packing import LADDER, Packer, RunHints
from p2p.blocks import (
    MAX_RUN,
    Block,
    BlockClient,
    BlocksError,
    BlockServer,
    Codec,
    Entry,
    Kind,
    Want,
    _pack,
    pack,
)
from store.chunking import digest

TEXT = b"".join(
    b"def function_%d(value):\n    return value * %d + %d\n\n" % (i, i % 7, i % 13)
    for i in range(20_000)
)


def _chunks(data: bytes, size: int = 64 << 10) -> list[Block]:
    return [
        Block(digest(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)
    ]


def _entries(frame: bytes) -> list[list[object]]:
    from p2p.blocks import _unpack
    from p2p.frame import FrameDecoder

    out = []
    for payload in FrameDecoder().feed(frame):
        _, items = _unpack(payload)
        out += items
    return out


@pytest.mark.parametrize("codec,level", [(Codec.ZSTD, 3), (Codec.XZ, 6)])
def test_a_frame_of_wants_comes_back_as_one_run_smaller_than_its_blocks_alone(
    codec: Codec, level: int
) -> None:
    blocks = _chunks(TEXT[: 1 << 20])
    client = BlockClient()
    client.want([Want(b.digest) for b in blocks])
    frame = BlockServer.reply(blocks, packer=lambda run, _: pack(run, codec=codec, level=level))
    (entry,) = _entries(frame)
    assert entry[0] == Entry.RUN and entry[1] == codec
    got = client.receive_data(frame)
    assert [(b.digest, b.data) for b in got if isinstance(b, Block)] == [
        (b.digest, b.data) for b in blocks
    ]
    alone = sum(len(pack([b], level=level).payload) for b in blocks)
    together = sum(b.wire for b in got if isinstance(b, Block))
    assert together < 0.8 * alone  # the window spans the run
    assert client.outstanding == 0


def test_wants_of_separate_frames_are_packed_separately_and_taken_whole() -> None:
    blocks = _chunks(TEXT[: 640 << 10])  # 10 chunks
    client = BlockClient()
    wire = client.want([Want(b.digest) for b in blocks], groups=[0] * 4 + [1] * 6)
    server = BlockServer()
    server.receive_data(wire)
    first = server.take(8)  # the second frame (6) does not fit after the first (4): not split
    assert [w.digest for w in first] == [b.digest for b in blocks[:4]]
    second = server.take(8)
    assert len(second) == 6 and set(server.groups.values()) == {2}
    frame = BlockServer.reply(
        blocks, group={b.digest: 0 if i < 4 else 1 for i, b in enumerate(blocks)}
    )
    assert [len(e[2]) for e in _entries(frame)] == [4, 6]  # type: ignore[arg-type]
    assert len(client.receive_data(frame)) == 10


def test_a_run_against_bases_uses_each_base_once() -> None:
    rnd = random.Random(3)
    old = rnd.randbytes(512 << 10)
    new = bytearray(old)
    new[100_000:100_000] = b"patched in the middle"
    olds = _chunks(old)
    news = _chunks(bytes(new))
    # Each new chunk lists the old chunks around it, as `node.exchange.bases` does.
    bases = {
        b.digest: tuple(o.digest for o in olds[max(0, i - 1) : i + 2]) for i, b in enumerate(news)
    }
    have = {o.digest: o.data for o in olds}
    client = BlockClient()
    client.want([Want(b.digest, bases=bases[b.digest]) for b in news], have)
    frame = BlockServer.reply(news, bases=bases, have=have)
    (entry,) = _entries(frame)
    assert entry[0] == Entry.RUN_DIFF
    got = client.receive_data(frame)
    assert [b.data for b in got if isinstance(b, Block)] == [b.data for b in news]
    assert all(isinstance(b, Block) and b.diff for b in got)
    assert sum(b.wire for b in got if isinstance(b, Block)) < 2048


def test_a_run_crossing_a_cancel_counts_the_cancelled_blocks_as_late() -> None:
    blocks = _chunks(TEXT[: 256 << 10])
    client = BlockClient()
    client.want([Want(b.digest) for b in blocks])
    client.cancel([blocks[1].digest])
    got = client.receive_data(BlockServer.reply(blocks))
    assert [b.digest for b in got] == [b.digest for b in blocks if b is not blocks[1]]
    assert client.late_bytes > 0


def test_a_server_drops_wants_cancelled_while_it_reads_them() -> None:
    blocks = _chunks(TEXT[: 256 << 10])
    client = BlockClient()
    server = BlockServer()
    server.receive_data(client.want([Want(b.digest) for b in blocks]))
    taken = server.take(64)
    server.receive_data(client.cancel([blocks[2].digest]))
    assert server.cancelled(taken) == {blocks[2].digest}
    server.answered(taken)
    assert server.cancelled(taken) == set()


def _run_entry(members: list[list[object]], payload: bytes, codec: int = 0) -> bytes:
    return _pack(Kind.REPLY, [[int(Entry.RUN), codec, members, payload]])


def test_runs_are_checked_strictly() -> None:
    blocks = _chunks(TEXT[: 128 << 10])
    a, b = blocks
    good = pack(blocks).payload

    def fresh() -> BlockClient:
        c = BlockClient()
        c.want([Want(a.digest), Want(b.digest)])
        return c

    cases = [
        ([[a.digest, len(a.data)], [a.digest, len(a.data)]], good, 0, "twice"),
        ([[a.digest, len(a.data)], [digest(b"x"), len(b.data)]], good, 0, "unsolicited"),
        ([[a.digest, MAX_RUN], [b.digest, MAX_RUN]], good, 0, "limit|run of"),
        ([[a.digest, len(a.data)], [b.digest, len(b.data)]], good, 9, "codec"),
        ([[a.digest, len(a.data)], [b.digest, len(b.data) - 1]], good, 0, "declares|bytes"),
        ([[a.digest, len(a.data)], [b.digest, len(b.data)]], good[:-3], 0, "decompress|bytes"),
        ([[a.digest, len(a.data)], [b.digest, len(b.data)]], good, 1, "decompress|bytes"),
    ]
    for members, payload, codec, match in cases:
        with pytest.raises(BlocksError, match=match):
            fresh().receive_data(_run_entry(members, payload, codec))  # type: ignore[arg-type]
    c = BlockClient()
    c.want([Want(a.digest)])
    with pytest.raises(BlocksError, match="without bases"):
        c.receive_data(_pack(Kind.REPLY, [[int(Entry.RUN_DIFF), [[a.digest, len(a.data)]], good]]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 200_000), max_size=6), st.sampled_from(LADDER))
def test_a_reply_of_runs_decodes_however_the_bytes_are_cut(
    cuts: list[int], rung: tuple[Codec, int]
) -> None:
    blocks = _chunks(TEXT[: 512 << 10], 32 << 10)
    client = BlockClient()
    client.want([Want(b.digest) for b in blocks])
    frame = Packer().encode(blocks, RunHints(link_rate=None if rung == LADDER[1] else 1.0))
    got = []
    at = 0
    for c in sorted(cuts) + [len(frame)]:
        got += client.receive_data(frame[at : max(at, c)])
        at = max(at, c)
    assert [b.data for b in got if isinstance(b, Block)] == [b.data for b in blocks]


def test_the_level_follows_the_link_and_a_crowd_hits_the_cache() -> None:
    packer = Packer()
    assert packer.level(None) == (Codec.ZSTD, 3)
    assert packer.level(1e9) == LADDER[0]  # faster than any level: the fastest
    assert packer.level(2.5e6) == (Codec.ZSTD, 9)  # 20 Mbit/s: xz would keep it waiting
    assert packer.level(500e3) == (Codec.XZ, 6)  # a slow uplink: the strongest
    # Diffs shrink twenty-fold: the compressor is what the peer waits for.
    assert packer.level(2.5e6, diff=True) == (Codec.ZSTD, 3)
    assert packer.level(1e6, diff=True) == (Codec.ZSTD, 9)
    assert packer.level(20e3, diff=True) == (Codec.ZSTD, 19)
    assert Packer(diff_level=5).level(20e3, diff=True) == (Codec.ZSTD, 3)
    # Measured: a level that turns out slower here loses its place.
    packer.speeds[(False, (Codec.ZSTD, 9))] = 2e6
    assert packer.level(2.5e6) == (Codec.ZSTD, 3)
    blocks = _chunks(TEXT[: 512 << 10])
    first = packer.encode(blocks, RunHints())
    assert packer.encode(blocks, RunHints()) == first and packer.hits == 1
