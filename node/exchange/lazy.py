"""Chunks for readers of lazy mounts, over blocks streams kept open per peer.

A read of a chunk not here waits on the network. When each such fetch opened streams of
its own (a yamux stream and a protocol negotiation per peer, then a schedule), a cold
4 KiB read cost 10-15 ms on loopback before a byte moved. Here each peer has one blocks
stream, opened when first needed and kept while it works; a request is one WANTS frame
on it, answered on the same stream, so a cold read costs about one round trip.

Readahead goes on streams of its own (up to AHEAD_LANES per peer, the least busy first),
so a reader's request never waits behind megabytes of readahead on its stream, and the
peer works on several readahead replies at once (reads, compression, sending).

Peers are asked one at a time, the one that delivered last first: a reader waits on the
first peer that has the chunks, never on the slowest of several. A DONT_HAVE or BUSY
answer, `request_timeout` of silence, or a broken stream passes what is left to the next
peer. Blocks are checked against their digests here; a peer that sends a wrong one, or
breaks the protocol, is punished and its stream dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from node.exchange.network import Network
from node.exchange.progress import Progress
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.blocks import Block, BlockClient, Busy, DontHave, Want
from p2p.frame import FrameError
from p2p.stream import ByteStream, StreamGone, abort, read_some, write
from store.chunking import digest as blake3_digest

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 5.0
AHEAD_LANES = 2  # readahead streams per peer, beside the one for reads that wait


class _Ask:
    """One request's wait on one peer: the chunks it still waits for, and what came."""

    def __init__(self, digests: Sequence[bytes]) -> None:
        self.left = set(digests)
        self.got: dict[bytes, Block] = {}
        self.done = trio.Event()

    def answer(self, block: Block | None, digest: bytes) -> None:
        if digest not in self.left:
            return
        self.left.discard(digest)
        if block is not None:
            self.got[digest] = block
        if not self.left:
            self.done.set()

    def give_up(self) -> None:
        self.left.clear()
        self.done.set()


@dataclass(eq=False)
class _Link:
    peer: str
    lane: int  # 0: reads that wait; 1..AHEAD_LANES: readahead
    stream: ByteStream
    client: BlockClient = field(default_factory=BlockClient)
    lock: trio.Lock = field(default_factory=trio.Lock)  # whole frames on the stream
    waiting: dict[bytes, list[_Ask]] = field(default_factory=dict)
    heard: float = 0.0  # when bytes last came
    broken: bool = False


class Links:
    """The node's blocks streams for lazy reads; `run` owns their reader tasks."""

    def __init__(self, net: Network, request_timeout: float) -> None:
        self.net = net
        self.request_timeout = request_timeout
        self._links: dict[tuple[str, int], _Link] = {}  # by peer and lane
        self._opening: dict[tuple[str, int], trio.Lock] = {}
        self._busy: Counter[tuple[str, int]] = Counter()  # requests on each lane now
        self._last_good: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def get(
        self, wanted: Sequence[bytes], progress: Progress, *, ahead: bool = False
    ) -> dict[bytes, bytes]:
        """The verified bytes of those of `wanted` some peer gave (in the order asked);
        `ahead`: readahead, which no reader waits on yet."""
        left = list(dict.fromkeys(wanted))
        got: dict[bytes, bytes] = {}
        peers = sorted(self.net.peers(), key=lambda p: -self._last_good.get(p, 0.0))
        for peer in peers:
            if not left:
                break
            lane = (peer, self._lane(peer, ahead))
            self._busy[lane] += 1  # counted while its stream opens too
            try:
                link = await self._link(*lane)
                blocks = [] if link is None else await self._ask(link, left)
            finally:
                self._busy[lane] -= 1
            for b in blocks:
                got[b.digest] = b.data
                progress.per_peer[peer] = progress.per_peer.get(peer, 0) + len(b.data)
                progress.bytes_done += len(b.data)
                progress.chunks_done += 1
                progress.received_bytes += b.wire
            if got:
                self._last_good[peer] = trio.current_time()
            left = [d for d in left if d not in got]
        return got

    def _lane(self, peer: str, ahead: bool) -> int:
        """Lane 0 for a reader; for readahead the least busy lane, the first of equals
        (so a second stream opens only while the first is busy)."""
        if not ahead:
            return 0
        return min(range(1, AHEAD_LANES + 1), key=lambda lane: (self._busy[(peer, lane)], lane))

    async def _link(self, peer: str, lane: int) -> _Link | None:
        key = (peer, lane)
        link = self._links.get(key)
        if link is not None:
            return link
        async with self._opening.setdefault(key, trio.Lock()):
            link = self._links.get(key)
            if link is not None:
                return link
            assert self._nursery is not None, "Links.run has not started"
            try:
                with trio.fail_after(OPEN_TIMEOUT):
                    stream = await self.net.open_stream(peer, BLOCKS)
            except Exception as e:  # noqa: BLE001 - that peer is gone: others may serve
                log.info("cannot open a blocks stream to %s: %s", peer, e)
                return None
            link = _Link(peer, lane, stream, heard=trio.current_time())
            self._links[key] = link
            self._nursery.start_soon(self._read, link)
            return link

    async def _ask(self, link: _Link, digests: list[bytes]) -> list[Block]:
        ask = _Ask(digests)
        new = []
        for d in digests:
            if d not in link.waiting:
                new.append(d)
            link.waiting.setdefault(d, []).append(ask)
        try:
            if new:
                async with link.lock:
                    data = link.client.want([Want(d) for d in new], groups=[0] * len(new))
                    await write(link.stream, data)
            asked = trio.current_time()
            while not ask.done.is_set() and not link.broken:
                # Silence, not slowness, ends the wait: a big readahead on a slow link
                # keeps its bytes coming.
                deadline = max(asked, link.heard) + self.request_timeout
                if trio.current_time() >= deadline:
                    log.info(
                        "%s sent nothing for %.0f s: asking another peer",
                        link.peer,
                        self.request_timeout,
                    )
                    await self._drop(link, ask)
                    break
                with trio.move_on_at(deadline):
                    await ask.done.wait()
        except StreamGone as e:
            log.info("lost the blocks stream to %s: %s", link.peer, e)
            self._break(link)
        finally:
            for d in digests:
                asks = link.waiting.get(d)
                if asks is not None and ask in asks:
                    asks.remove(ask)
                    if not asks:
                        del link.waiting[d]
        return list(ask.got.values())

    async def _drop(self, link: _Link, ask: _Ask) -> None:
        """Stop waiting on `link` for `ask`'s chunks; cancel those nobody else waits for."""
        alone = [d for d in ask.left if link.waiting.get(d) == [ask]]
        ask.give_up()
        if alone and not link.broken:
            try:
                async with link.lock:
                    await write(link.stream, link.client.cancel(alone))
            except StreamGone:
                self._break(link)

    async def _read(self, link: _Link) -> None:
        problem = None
        try:
            while True:
                data = await read_some(link.stream)
                if not data:
                    raise StreamGone("the peer closed the stream")
                link.heard = trio.current_time()
                for r in link.client.receive_data(data):
                    if isinstance(r, Block):
                        if blake3_digest(r.data) != r.digest:
                            problem = f"sent a block that is not {r.digest.hex()[:16]}"
                            return
                        self._answer(link, r.digest, r)
                    elif isinstance(r, DontHave | Busy):
                        self._answer(link, r.digest, None)
                    # Have and BadDiff answer what is never asked here (no want-haves, no bases).
        except FrameError as e:
            problem = f"blocks protocol: {e}"
        except StreamGone as e:
            log.info("the blocks stream to %s ended: %s", link.peer, e)
        finally:
            self._break(link)
            if problem is not None:
                with trio.CancelScope(shield=True):
                    await abort(link.stream)
                    await self.net.punish(link.peer, problem)
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await abort(link.stream)

    def _answer(self, link: _Link, digest: bytes, block: Block | None) -> None:
        for ask in link.waiting.pop(digest, []):
            ask.answer(block, digest)

    def _break(self, link: _Link) -> None:
        """The link is done: whoever waits on it moves on to the next peer."""
        link.broken = True
        if self._links.get((link.peer, link.lane)) is link:
            del self._links[(link.peer, link.lane)]
        for asks in link.waiting.values():
            for ask in asks:
                ask.give_up()
        link.waiting.clear()
