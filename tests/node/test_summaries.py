"""Summaries between two nodes' parts over an in-memory stream: what a peer lists, and
each change after, is what the other answers from; a silent peer is waited for once."""

from __future__ import annotations

import trio
import trio.testing

from node.daemon.summaries import SETTLE, Summaries
from p2p.stream import ByteStream, StreamGone

H1 = "1" * 32
H2 = "2" * 32
H3 = "3" * 32


class Pipe:
    """ByteStream over one end of trio's in-memory stream pair."""

    def __init__(self, s: trio.testing.MemoryStapledStream) -> None:  # type: ignore[type-arg]
        self.s = s

    async def read(self, n: int | None = None) -> bytes:
        return await self.s.receive_some(n)

    async def write(self, data: bytes) -> None:
        try:
            await self.s.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise StreamGone("closed") from None

    async def close(self) -> None:
        await self.s.aclose()

    async def reset(self) -> None:
        await self.s.aclose()


async def _no_punish(peer: str, problem: str) -> None:
    raise AssertionError(f"{peer} punished: {problem}")


async def test_a_peer_lists_what_it_holds_then_each_change(autojump_clock: object) -> None:
    seed, client = Summaries([H1]), Summaries()
    theirs, mine = trio.testing.memory_stream_pair()

    async def open_stream(peer: str, protocol: str) -> ByteStream:
        return Pipe(mine)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seed.serve, Pipe(theirs))
        nursery.start_soon(client.follow, "seed", open_stream, _no_punish)
        await trio.testing.wait_all_tasks_blocked()
        t = trio.current_time()
        await client.settle()
        assert trio.current_time() == t  # the seed listed everything: nothing to wait for
        assert client.holders(H1) == ["seed"] and client.known(H1)
        assert not client.known(H2) and client.holders(H2) == []
        seed.add([H2])
        await trio.testing.wait_all_tasks_blocked()
        assert client.holders(H2) == ["seed"]
        client.add([H3])
        assert client.known(H3) and client.holders(H3) == []  # ours, not the seed's
        await theirs.aclose()  # the seed's connection ends
        await trio.testing.wait_all_tasks_blocked()
        assert client.peers == {} and not client.known(H1)
        nursery.cancel_scope.cancel()


async def test_a_silent_peer_is_waited_for_once_then_counts_for_nothing(
    autojump_clock: object,
) -> None:
    client = Summaries()
    _, mine = trio.testing.memory_stream_pair()  # the other end never writes

    async def open_stream(peer: str, protocol: str) -> ByteStream:
        return Pipe(mine)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.follow, "hung", open_stream, _no_punish)
        await trio.testing.wait_all_tasks_blocked()
        t = trio.current_time()
        await client.settle()
        assert trio.current_time() - t == SETTLE
        t = trio.current_time()
        await client.settle()
        assert trio.current_time() == t
        assert not client.known(H1)
        nursery.cancel_scope.cancel()


async def test_a_peer_breaking_the_protocol_is_punished(autojump_clock: object) -> None:
    client = Summaries()
    theirs, mine = trio.testing.memory_stream_pair()
    punished: list[str] = []

    async def open_stream(peer: str, protocol: str) -> ByteStream:
        return Pipe(mine)

    async def punish(peer: str, problem: str) -> None:
        punished.append(problem)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.follow, "liar", open_stream, punish)
        await theirs.send_all(b"\x00\x00\x00\x02\x91\x07")  # one frame: [7]
        await trio.testing.wait_all_tasks_blocked()
        assert punished and "summary protocol" in punished[0]
        assert client.peers == {}
        await client.settle()  # and nothing is waited for
        nursery.cancel_scope.cancel()


async def test_a_reconnected_peer_keeps_its_new_summary(autojump_clock: object) -> None:
    seed, client = Summaries([H1]), Summaries()
    old_theirs, old_mine = trio.testing.memory_stream_pair()
    new_theirs, new_mine = trio.testing.memory_stream_pair()
    streams = iter([old_mine, new_mine])

    async def open_stream(peer: str, protocol: str) -> ByteStream:
        return Pipe(next(streams))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seed.serve, Pipe(old_theirs))
        nursery.start_soon(client.follow, "seed", open_stream, _no_punish)
        await trio.testing.wait_all_tasks_blocked()
        # The peer reconnects before the old connection's stream has ended.
        nursery.start_soon(seed.serve, Pipe(new_theirs))
        nursery.start_soon(client.follow, "seed", open_stream, _no_punish)
        await trio.testing.wait_all_tasks_blocked()
        await old_theirs.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert client.holders(H1) == ["seed"]
        nursery.cancel_scope.cancel()
