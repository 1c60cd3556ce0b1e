"""Answering peers: `/ferry/blocks/1` and `/ferry/claims/1` on inbound streams."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from p2p import claims as wire
from p2p.blocks import MAX_BASE_BYTES, Block, BlockServer, DontHave, Have, Reply, Want
from p2p.frame import FrameError
from p2p.stream import ByteStream, StreamGone, abort, read_some, write
from trust.claim import ClaimError, SignedClaim

log = logging.getLogger(__name__)

SERVE_BATCH = 64  # wants answered per store read
CLAIM_TIMEOUT = 10.0


class BlobSource(Protocol):
    async def blobs(self, digests: list[bytes]) -> dict[bytes, bytes]:
        """The present, intact chunks and manifests among `digests`."""
        ...

    async def encode_reply(self, replies: list[Reply], prefixes: dict[bytes, bytes]) -> bytes:
        """Compress and frame replies (off the event loop); a block with a prefix is
        compressed against it (the bases its requester holds)."""
        ...

    async def present(self, digests: list[bytes]) -> set[bytes]:
        """Which of `digests` are chunks held here (no data read)."""
        ...

    def changes(self) -> trio.Event:
        """Set the next time chunks are added (a fresh event each time)."""
        ...


class ClaimBook(Protocol):
    async def claims_for(self, path_hash: str) -> list[SignedClaim]: ...
    async def learn(self, claims: list[SignedClaim], source: str) -> int: ...


@dataclass
class Served:
    blocks: int = 0
    bytes: int = 0

    def add(self, blocks: int, size: int) -> None:
        self.blocks += blocks
        self.bytes += size


async def serve_blocks(stream: ByteStream, peer: str, source: BlobSource,
                       on_violation: Callable[[str, str], Awaitable[None]],
                       on_sent: Callable[[int, int], None]) -> None:
    """Reads wants while answering earlier ones, until the client closes the stream;
    `on_sent(blocks, bytes)` as each reply is handed to the connection."""
    server = BlockServer()
    more = trio.Event()
    ended = False
    sending = trio.Lock()  # answers and HAVE notices share the stream: whole frames each

    async def receive() -> None:
        nonlocal ended
        while True:
            data = await read_some(stream)
            if not data:
                server.end_of_stream()
                ended = True
                more.set()
                return
            server.receive_data(data)
            more.set()

    async def answer() -> None:
        nonlocal more
        while True:
            wants = server.take(SERVE_BATCH)
            if not wants:
                if ended:
                    return
                await more.wait()
                more = trio.Event()
                continue
            bases = {b for w in wants if w.block for b in w.bases}
            arrivals = source.changes()  # before looking: a chunk landing meanwhile is noticed
            found = await source.blobs([w.digest for w in wants] + sorted(bases))
            replies: list[Reply] = []
            later: list[Want] = []
            for w in wants:
                if w.digest in found:
                    replies.append(Block(w.digest, found[w.digest]) if w.block else Have(w.digest))
                elif w.block:
                    replies.append(DontHave(w.digest))
                else:
                    later.append(w)  # a subscription: HAVE once it is here (see `notify`)
            server.wait(later)
            if later and arrivals.is_set():
                await announce()
            if not replies:
                continue
            frame = await source.encode_reply(replies, _prefixes(wants, found))
            # Counted when handed to the connection: a client that resets its stream the
            # moment it has the last block would otherwise cancel the count of what it got.
            sent = [len(r.data) for r in replies if isinstance(r, Block)]
            on_sent(len(sent), sum(sent))
            async with sending:
                await write(stream, frame)

    async def announce() -> None:
        """HAVE for the subscriptions whose chunks are here now."""
        waiting = server.waiting
        if waiting:
            haves = server.arrived(await source.present(waiting))
            if haves:
                frame = await source.encode_reply(list(haves), {})
                async with sending:
                    await write(stream, frame)

    async def notify() -> None:
        while True:
            await source.changes().wait()
            await announce()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            nursery.start_soon(notify)
            await answer()
            nursery.cancel_scope.cancel()  # the client is done: so are its subscriptions

    problem: str | None = None
    clean = False
    try:
        await run()
        clean = True
    except* FrameError as group:  # framing or msgpack: BlocksError is one
        problem = str(group.exceptions[0])
    except* StreamGone:
        pass
    if problem is not None:
        await abort(stream)
        await on_violation(peer, f"blocks protocol: {problem}")
    elif clean:
        await _close(stream)


def _prefixes(wants: list[Want], found: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The bases to compress each wanted block against: all of them, or none (the client
    decodes with all it listed; a frame made without any decodes either way)."""
    out = {}
    for w in wants:
        if w.block and w.bases and w.digest in found and all(b in found for b in w.bases):
            if sum(len(found[b]) for b in w.bases) <= MAX_BASE_BYTES:
                out[w.digest] = b"".join(found[b] for b in w.bases)
    return out


async def serve_claims(stream: ByteStream, peer: str, book: ClaimBook,
                       on_violation: Callable[[str, str], Awaitable[None]]) -> None:
    reader = wire.Reader()
    try:
        with trio.fail_after(CLAIM_TIMEOUT):
            msg = None
            while msg is None:
                data = await read_some(stream)
                if not data:
                    return
                msg = reader.receive_data(data)
            if isinstance(msg, wire.Get):
                found = await book.claims_for(msg.path_hash)
                await write(stream, wire.encode(wire.Claims(tuple(c.encode() for c in found[:wire.MAX_CLAIMS]))))
            elif isinstance(msg, wire.Push):
                good = []
                for raw in msg.claims:
                    try:
                        c = SignedClaim.decode(raw)
                    except ClaimError:
                        continue
                    if c.valid():
                        good.append(c)
                accepted = await book.learn(good, peer)
                await write(stream, wire.encode(wire.Ack(accepted)))
            else:
                raise wire.ClaimsError("a client sent an answer")
    except FrameError as e:  # ClaimsError is one
        await abort(stream)
        await on_violation(peer, f"claims protocol: {e}")
        return
    except (StreamGone, trio.TooSlowError):
        await abort(stream)
        return
    await _close(stream)


async def _close(stream: ByteStream) -> None:
    try:
        await stream.close()
    except Exception:  # the peer may have gone already: the stream is finished either way
        pass
