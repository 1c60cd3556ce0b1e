"""Fetching chunks from every peer at once: the trio loop that drives a transfer core
(node.exchange.transfer) per peer, sending what it says, reading replies and storing
the blocks it accepts."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from node.exchange.network import Network
from node.exchange.progress import Progress
from node.exchange.schedule import Schedule
from node.exchange.transfer import BadPeer, Transfer
from p2p.blocks import MAX_BASE_BYTES, BlockClient, Reply, Want
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.frame import FrameError
from p2p.stream import ByteStream, StreamGone, abort, finish, read_some, write

log = logging.getLogger(__name__)

# Seconds between a session's looks for newly connected peers (and for a hopeless state).
PEER_CHECK = 5.0


class BlockSink(Protocol):
    """Where verified blocks go, and the local chunks diffs are made against."""

    async def store_blocks(self, blocks: list[tuple[bytes, bytes]]) -> None: ...

    async def read_chunks(self, digests: list[bytes]) -> dict[bytes, bytes]:
        """Present, intact local chunks among `digests`."""
        ...

    async def save(self) -> None:
        """Make the stored blocks durable (called at the end, and when interrupted)."""
        ...


def fresh_schedule(sizes: dict[bytes, int], cut: Sequence[Sequence[bytes]] | None) -> Schedule:
    # Peers fetching the same closure start at different chunks, so they have
    # something to trade early (a flash crowd).
    return Schedule(sizes, rng=random.Random(), cut=cut)


NewSchedule = Callable[[dict[bytes, int], Sequence[Sequence[bytes]] | None], Schedule]


async def download(
    net: Network,
    sink: BlockSink,
    missing: dict[bytes, int],
    progress: Progress,
    *,
    request_timeout: float,
    schedule: NewSchedule = fresh_schedule,
    cut: Sequence[Sequence[bytes]] | None = None,
    bases: dict[bytes, tuple[bytes, ...]] | None = None,
    plain: set[bytes] | None = None,
    on_progress: Callable[[], Awaitable[None]] | None = None,
) -> str | None:
    """Fetch `missing` (digest -> size) into `sink`; None when all came, else why not.
    `cut`: runs to ask for together (`Schedule.cut`); `bases`: local chunks to ask diffs
    against; `plain`: chunks whose diff failed (updated here, so a later download asks
    them plain too)."""
    progress.chunks = len(missing)
    progress.bytes = sum(missing.values())
    if not missing:
        return None
    core = Transfer(
        schedule(dict(missing), cut),
        request_timeout,
        progress,
        bases={} if bases is None else bases,
        plain=set() if plain is None else plain,
        last_news=trio.current_time(),
    )
    return await _Download(net, sink, core, on_progress).run()


class _Download:
    def __init__(
        self,
        net: Network,
        sink: BlockSink,
        core: Transfer,
        on_progress: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.net = net
        self.sink = sink
        self.core = core
        self.on_progress = on_progress
        # Set when chunks go back to the queue, a worker ends, or all is here.
        self._changed = trio.Event()
        # Each worker's stream, its client and the lock its writes take: another worker
        # that gets a chunk first cancels it here at once.
        self._links: dict[str, tuple[ByteStream, BlockClient, trio.Lock]] = {}

    async def run(self) -> str | None:
        core = self.core
        failure: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                started: set[str] = set()

                def add_peers() -> None:
                    for p in self.net.peers():
                        if p not in started:
                            started.add(p)
                            core.sched.add_peer(p)
                            nursery.start_soon(self._worker, p)

                add_peers()
                while not core.complete:
                    failure = core.hopeless(trio.current_time())
                    if failure is not None:
                        break
                    changed = self._changed
                    # Half a request timeout at most: a hopeless fetch (a chunk nobody has)
                    # fails soon after its quiet spell, which a lazy-mount read waits on.
                    with trio.move_on_after(min(PEER_CHECK, core.request_timeout / 2)):
                        await changed.wait()
                    add_peers()  # peers that connected meanwhile join in
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.sink.save()
        return failure

    def _notify(self, workers: bool = True) -> None:
        """News: with `workers`, chunks went back to the queue, and idle workers may
        take them (waking every worker for each block was most of a crowd's CPU)."""
        self.core.news(trio.current_time())
        if workers:
            self._changed.set()
            self._changed = trio.Event()

    async def _worker(self, peer: str) -> None:
        core = self.core
        try:
            stream = await self.net.open_stream(peer, BLOCKS)
        except Exception as e:  # noqa: BLE001 - the peer is gone: the others carry on
            log.info("cannot open a blocks stream to %s: %s", peer, e)
            core.close(peer)
            self._notify()
            return
        core.open(peer, trio.current_time())
        self._links[peer] = (stream, BlockClient(), trio.Lock())
        try:
            await self._exchange(peer, stream)
        except FrameError as e:  # BlocksError is one
            await abort(stream)
            await self.net.punish(peer, f"blocks protocol: {e}")
        except BadPeer as e:
            await abort(stream)
            await self.net.punish(peer, str(e))
        except StreamGone as e:
            log.info("lost %s mid-fetch: %s", peer, e)
        except trio.Cancelled:
            # The session is over: free the server's side now, not when the connection goes.
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await abort(stream)
            raise
        else:
            await finish(stream)
        finally:
            self._links.pop(peer, None)
            core.close(peer)
            self._notify()

    async def _send(self, peer: str, data: bytes) -> None:
        stream, _, lock = self._links[peer]
        async with lock:
            await write(stream, data)

    async def _cancel_elsewhere(self, me: str) -> None:
        """Cancels for chunks that just arrived, to the other peers asked for them."""
        for peer in self.core.cancels_now():
            assert isinstance(peer, str)  # peers are named by their libp2p ids here
            link = self._links.get(peer)
            if peer == me or link is None:
                continue
            cancels = self.core.take_cancels(peer, link[1].is_outstanding)
            if cancels:
                try:
                    await self._send(peer, link[1].cancel(cancels))
                except StreamGone:
                    pass  # that worker finds out itself

    async def _exchange(self, peer: str, stream: ByteStream) -> None:
        """Drives the core for one peer: sends what it says, reads replies, stores blocks."""
        core = self.core
        client = self._links[peer][1]
        while not core.complete:
            step = core.step(peer, trio.current_time(), client.is_outstanding)
            if step.requeued:
                self._notify()
            if step.query:
                await self._send(peer, client.want([Want(d, block=False) for d in step.query]))
            if step.cancels:
                await self._send(peer, client.cancel(step.cancels))
            if step.ask:
                wants, base_bytes = await self._wants(step.ask)
                runs = core.sched.runs
                await self._send(
                    peer,
                    client.want(wants, base_bytes, groups=[runs.get(w.digest, -1) for w in wants]),
                )
            if not client.outstanding:
                # Nothing this peer can do now; wake when the picture changes.
                changed = self._changed
                with trio.move_on_after(core.rest(peer, trio.current_time())):
                    await changed.wait()
                core.rested(peer, trio.current_time())
                continue
            # Read on until a frame completes: most reads end mid-frame, and the bookkeeping
            # above only has news once one does.
            replies: list[Reply] = []
            with trio.move_on_after(core.read_timeout(peer)):
                while not replies and client.outstanding:
                    data = await read_some(stream)
                    if not data:
                        raise StreamGone("the peer closed the stream")
                    core.heard(peer, trio.current_time())
                    late = client.late_bytes
                    replies = client.receive_data(data)
                    # Blocks that came after we cancelled them: sent twice all the same.
                    core.progress.duplicate_bytes += client.late_bytes - late
            judged = core.judge(peer, replies, trio.current_time())
            if judged.good:
                await self.sink.store_blocks(judged.good)
                core.stored(peer, judged, trio.current_time())
                await self._cancel_elsewhere(peer)
                if self.on_progress is not None:
                    await self.on_progress()
            if judged.good or judged.requeued:
                self._notify(workers=judged.requeued or core.complete)

    async def _wants(self, ask: list[bytes]) -> tuple[list[Want], dict[bytes, bytes]]:
        """Wants for `ask`, with bases where we hold them, and the bases' bytes to decode
        with."""
        with_bases = self.core.with_bases(ask)
        have: dict[bytes, bytes] = {}
        if with_bases:
            have = await self.sink.read_chunks(
                sorted({b for bs in with_bases.values() for b in bs})
            )
            for d, bs in list(with_bases.items()):
                if not (
                    all(b in have for b in bs) and sum(len(have[b]) for b in bs) <= MAX_BASE_BYTES
                ):
                    del with_bases[d]
        return [Want(d, bases=with_bases.get(d, ())) for d in ask], have
