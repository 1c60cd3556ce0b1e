"""The lazy mounts' kept blocks streams (`node.exchange.lazy.Links`) against a peer that
answers each stream's wants in order, as ferry's server does: a reader's request is not
queued behind readahead, and readahead spreads over streams of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import trio
import trio.testing

from node.exchange.lazy import AHEAD_LANES, Links
from node.exchange.progress import Progress
from p2p.blocks import Block, BlockServer, Wants
from store.chunking import digest

PEER = "peer-1"


class Pipe:
    """One end of an in-memory stream, as a ByteStream."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.receive_some(n or 65536)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    async def reset(self) -> None:
        await self.stream.aclose()


class Peer:
    """Serves blocks, one stream's wants after another; wants of `held` chunks are
    answered only once `release` is set."""

    def __init__(self, nursery: trio.Nursery, blobs: dict[bytes, bytes]) -> None:
        self.nursery = nursery
        self.blobs = blobs
        self.held: set[bytes] = set()
        self.release = trio.Event()
        self.streams: list[list[bytes]] = []  # per stream opened, the digests asked on it

    def peers(self) -> Iterator[str]:
        return iter([PEER])

    async def open_stream(self, peer: str, protocol: str) -> Pipe:
        ours, theirs = trio.testing.memory_stream_pair()
        asked: list[bytes] = []
        self.streams.append(asked)
        self.nursery.start_soon(self._serve, Pipe(theirs), asked)
        return Pipe(ours)

    async def punish(self, peer: str, problem: str) -> None:
        raise AssertionError(f"punished {peer}: {problem}")

    async def _serve(self, stream: Pipe, asked: list[bytes]) -> None:
        server = BlockServer()
        while data := await stream.read():
            for event in server.receive_data(data):
                if not isinstance(event, Wants):
                    continue
                digests = [w.digest for w in event.wants]
                asked += digests
                if self.held & set(digests):
                    await self.release.wait()
                server.take(len(digests))
                blocks = [Block(d, self.blobs[d]) for d in digests]
                await stream.write(BlockServer.reply(blocks))


def _blobs(n: int) -> dict[bytes, bytes]:
    out = {}
    for _ in range(n):
        data = os.urandom(5000)
        out[digest(data)] = data
    return out


async def test_a_reader_is_not_queued_behind_readahead(nursery: trio.Nursery) -> None:
    blobs = _blobs(6)
    ahead, (reader_wants, *_) = list(blobs)[:4], list(blobs)[4:]
    peer = Peer(nursery, blobs)
    peer.held = set(ahead)  # the readahead's replies take their time
    links = Links(peer, request_timeout=30)  # type: ignore[arg-type]
    await nursery.start(links.run)

    async def read_ahead(digests: list[bytes]) -> None:
        assert await links.get(digests, Progress(), ahead=True) == {d: blobs[d] for d in digests}

    nursery.start_soon(read_ahead, ahead[:2])
    nursery.start_soon(read_ahead, ahead[2:])
    await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(5):
        got = await links.get([reader_wants], Progress())
    assert got == {reader_wants: blobs[reader_wants]}
    assert not peer.release.is_set()  # answered while the readahead still waits
    # Two readahead requests at once went on two streams, the reader's on a third.
    assert sorted(map(sorted, peer.streams)) == sorted(
        [sorted(ahead[:2]), sorted(ahead[2:]), [reader_wants]]
    )
    assert len(peer.streams) == 1 + AHEAD_LANES
    peer.release.set()
    await trio.testing.wait_all_tasks_blocked()
    # Streams are kept: later requests, readahead or not, open none.
    ((more, data),) = _blobs(1).items()
    blobs[more] = data  # the peer's dict too
    await read_ahead([more])
    assert len(peer.streams) == 1 + AHEAD_LANES
    (on,) = [s for s in peer.streams if more in s]
    assert reader_wants not in on  # a readahead stream's
