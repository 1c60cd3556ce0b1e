"""Which store paths this node and each connected peer can answer claims for, in memory.

Nix asks the gateway for every path of every build, and most are misses: a path nobody
near us has is answered from here, with no round trip, and the peers worth asking for
a hit are the ones whose summary names it. Ours is served on `/ferry/summary/1` to every
peer that subscribes (all of it, then each change); theirs are read the same way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable

import trio

from p2p import summary
from p2p.frame import FrameError
from p2p.stream import ByteStream, StreamGone, abort, read_some, write

log = logging.getLogger(__name__)

# How long a newly connected peer may take to list what it holds before answers stop
# waiting for it (a hung peer never does; it then counts as holding nothing).
SETTLE = 1.0

OpenStream = Callable[[str, str], Awaitable[ByteStream]]
Punish = Callable[[str, str], Awaitable[None]]


class Summaries:
    def __init__(self, local: Iterable[str] = ()) -> None:
        self.local: set[bytes] = {summary.key(h) for h in local}
        self.peers: dict[str, summary.PeerSummary] = {}
        self._waiting: dict[str, float] = {}  # peer -> when answers stop waiting for it
        self._changed = trio.Event()  # a peer synced or left
        self._subscribers: list[trio.MemorySendChannel[frozenset[bytes]]] = []

    # --- ours

    def add(self, path_hashes: Iterable[str]) -> None:
        """Paths this node now has claims for (published, fetched, learned)."""
        new = frozenset(summary.key(h) for h in path_hashes) - self.local
        if not new:
            return
        self.local |= new
        for ch in self._subscribers:
            try:
                ch.send_nowait(new)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a subscriber that stopped reading: its stream is being torn down

    async def serve(self, stream: ByteStream) -> None:
        """Ours, to one subscriber, until it goes."""
        send, receive = trio.open_memory_channel[frozenset[bytes]](math.inf)
        self._subscribers.append(send)
        try:
            await write(
                stream,
                summary.encode_all(summary.Add, self.local) + summary.encode(summary.Synced()),
            )
            async with receive:
                async for keys in receive:
                    await write(stream, summary.encode_all(summary.Add, keys))
        except StreamGone:
            pass
        finally:
            self._subscribers.remove(send)
            send.close()

    # --- theirs

    async def follow(self, peer: str, open_stream: OpenStream, punish: Punish) -> None:
        """Read `peer`'s summary until its connection ends. A new connection's summary
        replaces the one of a connection still being torn down."""
        mine = self.peers[peer] = summary.PeerSummary()
        self._waiting[peer] = trio.current_time() + SETTLE
        try:
            stream = await open_stream(peer, summary.PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an old or unreachable peer: it holds nothing we know of
            log.debug("no summary from %s: %s", peer, e)
            self._forget(peer, mine)
            return
        try:
            while data := await read_some(stream):
                if mine.receive_data(data) and mine.synced:
                    self._settled(peer)
        except FrameError as e:
            await abort(stream)
            await punish(peer, f"summary protocol: {e}")
        except StreamGone:
            pass
        finally:
            self._forget(peer, mine)

    def _settled(self, peer: str) -> None:
        if self._waiting.pop(peer, None) is not None:
            self._changed.set()
            self._changed = trio.Event()

    def _forget(self, peer: str, mine: summary.PeerSummary) -> None:
        if self.peers.get(peer) is mine:  # not a newer connection's
            self.peers.pop(peer)
            self._settled(peer)

    @property
    def settled(self) -> bool:
        """Every connected peer has listed what it holds (or had its time to)."""
        return not self._waiting

    async def settle(self) -> None:
        """Wait until every newly connected peer has listed what it holds, or had SETTLE
        seconds to."""
        while self._waiting:
            deadline = min(self._waiting.values())
            if trio.current_time() >= deadline:
                for p, t in list(self._waiting.items()):
                    if t <= deadline:
                        log.info("%s did not list its paths within %g s", p, SETTLE)
                        self._settled(p)
                continue
            with trio.move_on_at(deadline):
                await self._changed.wait()

    # --- answers

    def holders(self, path_hash: str) -> list[str]:
        """The peers whose summary names this path."""
        k = summary.key(path_hash)
        return [p for p, s in self.peers.items() if k in s.keys]

    def known(self, path_hash: str) -> bool:
        """Whether this node or a connected peer has claims for the path: if not, no
        peer near us can answer for it."""
        return summary.key(path_hash) in self.local or bool(self.holders(path_hash))
