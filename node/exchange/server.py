"""Answering peers: `/ferry/blocks/1` and `/ferry/claims/1` on inbound streams."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from node.exchange.subscriptions import Subscriptions
from node.exchange.uplink import Uplink
from p2p import claimwire
from p2p.blocks import MAX_BASE_BYTES, Block, BlockServer, Busy, Cancel, DontHave, Have, Reply, Want
from p2p.frame import FrameError
from p2p.stream import ByteStream, StreamGone, abort, read_some, write
from trust.claim import ClaimError, SignedClaim

log = logging.getLogger(__name__)

SERVE_BATCH = 64  # wants answered per store read
# HAVE notices wait this long to share a frame with the next ones: a node that just got a
# chunk usually gets more within a moment, and a request for it would wait behind what
# the node is sending anyway. (In a crowd, one frame per chunk per subscriber was most of
# the traffic by count.)
HAVE_DELAY = 1.0
CLAIM_TIMEOUT = 10.0


class BlobSource(Protocol):
    subscriptions: (
        Subscriptions  # the node's want-haves of chunks it lacks (wake them as chunks land)
    )

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


class ClaimBook(Protocol):
    async def claims_for_many(self, path_hashes: Sequence[str]) -> list[list[SignedClaim]]: ...
    async def learn(self, claims: list[SignedClaim], source: str) -> int: ...


@dataclass
class Served:
    blocks: int = 0
    bytes: int = 0

    def add(self, blocks: int, size: int) -> None:
        self.blocks += blocks
        self.bytes += size


async def serve_blocks(
    stream: ByteStream,
    peer: str,
    source: BlobSource,
    on_violation: Callable[[str, str], Awaitable[None]],
    on_sent: Callable[[int, int], None],
    uplink: Uplink | None = None,
) -> None:
    """Reads wants while answering earlier ones, until the client closes the stream;
    `on_sent(blocks, bytes)` as each reply is handed to the connection. With `uplink`
    (the node's, shared by its streams), blocks go out only while the peer holds an
    upload slot; other want-blocks are answered BUSY."""
    server = BlockServer()
    subscriber = source.subscriptions.subscriber()
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
            for event in server.receive_data(data):
                if isinstance(event, Cancel):
                    subscriber.unwatch(event.digests)
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
            slot = uplink is None or not any(w.block for w in wants) or uplink.admit(peer)
            try:
                await _answer(wants, slot)
            finally:
                if slot and uplink is not None and any(w.block for w in wants):
                    uplink.release(peer)

    async def _answer(wants: list[Want], slot: bool) -> None:
        # Watched before looking: a chunk that lands meanwhile is announced.
        subscriber.watch(w.digest for w in wants if not w.block)
        # Without a slot, chunks wait; manifests (metadata, needed before any chunk) and
        # answers of DONT_HAVE never do.
        busy = set() if slot else await source.present([w.digest for w in wants if w.block])
        bases = {b for w in wants if w.block and w.digest not in busy for b in w.bases}
        ask = [w.digest for w in wants if w.digest not in busy] + sorted(bases)
        found = await source.blobs(ask)
        replies: list[Reply] = []
        later: list[Want] = []
        for w in wants:
            if not w.block:
                if w.digest in found:
                    replies.append(Have(w.digest))
                else:
                    later.append(w)  # a subscription: HAVE once it is here (see `notify`)
            elif w.digest in busy:
                replies.append(Busy(w.digest))
            elif w.digest in found:
                replies.append(Block(w.digest, found[w.digest]))
            else:
                replies.append(DontHave(w.digest))
        server.wait(later)
        subscriber.unwatch(w.digest for w in wants if not w.block and w.digest in found)
        if not replies:
            return
        frame = await source.encode_reply(replies, _prefixes(wants, found))
        # Counted when handed to the connection: a client that resets its stream the
        # moment it has the last block would otherwise cancel the count of what it got.
        sent = [len(r.data) for r in replies if isinstance(r, Block)]
        on_sent(len(sent), sum(sent))
        async with sending:
            await write(stream, frame)

    async def notify() -> None:
        """HAVE for the subscriptions whose chunks are here now."""
        while True:
            await subscriber.wait(peek=True)
            await trio.sleep(HAVE_DELAY)
            ready, recheck = await subscriber.wait()
            if recheck:
                ready |= await source.present(server.waiting)
            haves = server.arrived(ready)
            if haves:
                frame = await source.encode_reply(list(haves), {})
                async with sending:
                    await write(stream, frame)

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
    finally:
        subscriber.close()
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
        if (
            w.block
            and w.bases
            and w.digest in found
            and all(b in found for b in w.bases)
            and sum(len(found[b]) for b in w.bases) <= MAX_BASE_BYTES
        ):
            out[w.digest] = b"".join(found[b] for b in w.bases)
    return out


async def serve_claims(
    stream: ByteStream,
    peer: str,
    book: ClaimBook,
    on_violation: Callable[[str, str], Awaitable[None]],
) -> None:
    reader = claimwire.Reader()
    try:
        with trio.fail_after(CLAIM_TIMEOUT):
            msg = None
            while msg is None:
                data = await read_some(stream)
                if not data:
                    return
                msg = reader.receive_data(data)
            if isinstance(msg, claimwire.Get | claimwire.Gets):
                hashes = (msg.path_hash,) if isinstance(msg, claimwire.Get) else msg.path_hashes
                answers = await book.claims_for_many(hashes)
                await write(
                    stream,
                    b"".join(
                        claimwire.encode(
                            claimwire.Claims(
                                tuple(c.encode() for c in found[: claimwire.MAX_CLAIMS])
                            )
                        )
                        for found in answers
                    ),
                )
            elif isinstance(msg, claimwire.Push):
                good = []
                for raw in msg.claims:
                    try:
                        c = SignedClaim.decode(raw)
                    except ClaimError:
                        continue
                    if c.valid():
                        good.append(c)
                accepted = await book.learn(good, peer)
                await write(stream, claimwire.encode(claimwire.Ack(accepted)))
            else:
                raise claimwire.ClaimsError("a client sent an answer")
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
    except Exception:  # noqa: BLE001 - the peer may have gone already: the stream is finished either way
        pass
