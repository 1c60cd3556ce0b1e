"""Answering peers: `/ferry/blocks/2` and `/ferry/claims/1` on inbound streams."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from node.exchange.limits import DEFAULT as DEFAULT_LIMITS
from node.exchange.limits import PeerLimits
from node.exchange.packing import RunHints
from node.exchange.subscriptions import Subscriptions
from node.exchange.uplink import Turn, Uplink
from p2p import claimwire
from p2p.blocks import Block, BlockServer, Busy, Cancel, DontHave, Have, Reply, Want
from p2p.frame import FrameError
from p2p.stream import (
    UNSENT_BYTES,
    ByteStream,
    ReaderStalled,
    StreamGone,
    abort,
    read_some,
    write,
    write_paced,
)
from trust.claim import ClaimError, SignedClaim

log = logging.getLogger(__name__)

SERVE_BATCH = 128  # wants answered per store read, at most (a run's, whole: RUN_CHUNKS)
FEW_WANTS = 4  # block wants read without asking their sizes first
REPLY_CAP = 4 << 20  # block bytes one reply carries, at most: what a stalled reply holds
LINK_SAMPLE = 512 << 10  # frames at least this big measure how fast the peer takes them
SLOT_WAIT = 0.5  # seconds a want-block waits for a free upload slot before it is answered BUSY
# HAVE notices wait this long to share a frame with the next ones: a node that just got a
# chunk usually gets more within a moment, and a request for it would wait behind what
# the node is sending anyway. (In a crowd, one frame per chunk per subscriber was most of
# the traffic by count.)
HAVE_DELAY = 1.0

OnProblem = Callable[[str, str], Awaitable[None]]  # (peer, what it did)


class RequestLate(Exception):
    """A peer started a request frame and did not finish it in time."""


class ReplyDropped(Exception):
    """A reply whose reader turned slow while the uplink already kept as many slow
    replies as it will: the stream is reset (the peer may ask again)."""


class BlobSource(Protocol):
    subscriptions: (
        Subscriptions  # the node's want-haves of chunks it lacks (wake them as chunks land)
    )

    async def blobs(self, digests: list[bytes]) -> dict[bytes, bytes]:
        """The present, intact chunks and manifests among `digests`."""
        ...

    async def encode_reply(self, replies: list[Reply], hints: RunHints) -> bytes:
        """Compress and frame replies (off the event loop): blocks in runs, against the
        bases their requester holds where `hints` has them, at a level the link can use."""
        ...

    async def present(self, digests: list[bytes]) -> set[bytes]:
        """Which of `digests` are chunks held here (no data read)."""
        ...

    async def sizes(self, digests: list[bytes]) -> dict[bytes, int]:
        """The lengths of the chunks and manifests among `digests` held here (no data
        read): a reply reads what fits its cap, whatever the blocks' sizes."""
        ...


@dataclass(frozen=True)
class Kept:
    """What became of claims a peer pushed."""

    new: int
    refused: int  # over the budget for keys outside the policy: junk, counted against the sender


class ClaimBook(Protocol):
    async def claims_for_many(self, path_hashes: Sequence[str]) -> list[list[SignedClaim]]: ...
    async def keep(self, claims: list[SignedClaim], source: str) -> Kept: ...


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
    on_violation: OnProblem,
    on_sent: Callable[[int, int], None],
    uplink: Uplink | None = None,
    *,
    limits: PeerLimits = DEFAULT_LIMITS,
    on_strike: OnProblem | None = None,
    link_rate: float | None = None,
) -> None:
    """Reads wants while answering earlier ones, until the client closes the stream;
    `on_sent(blocks, bytes)` as each reply is handed to the connection. With `uplink`
    (the node's, shared by its streams), blocks go out only while the peer has a turn;
    other want-blocks are answered BUSY. A peer that does not take what it asked for, or
    does not finish a request frame, in the time `limits` give loses the stream and gets
    a strike (`on_strike`); one that breaks the protocol is a violation. `link_rate`:
    bytes per second the peer is taken to take until a reply measures it (None: not
    known; the node says so for a peer on loopback, whose first replies would otherwise
    come packed ahead, costing its CPU more than they save a link that costs nothing)."""
    server = BlockServer()
    subscriber = source.subscriptions.subscriber()
    more = trio.Event()
    ended = False
    sending = trio.Lock()  # answers and HAVE notices share the stream: whole frames each

    async def receive() -> None:
        nonlocal ended
        deadline = math.inf  # for the frame the peer has started
        while True:
            with trio.move_on_at(deadline):
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
                if not server.mid_frame:
                    deadline = math.inf
                elif deadline == math.inf:
                    deadline = trio.current_time() + limits.frame_deadline
                continue
            raise RequestLate(f"left a request frame unfinished for {limits.frame_deadline:.0f} s")

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
            turn: Turn | None = None
            busy: set[bytes] = set()  # chunks held here but not sent now (no turn)
            if uplink is not None and any(w.block for w in wants):
                turn = uplink.try_turn(peer)
                if turn is None:
                    # Only chunks wait for a turn; manifests (metadata, needed before any
                    # chunk) and answers of DONT_HAVE never do.
                    busy = await source.present([w.digest for w in wants if w.block])
                    if busy:
                        turn = await uplink.wait_turn(peer, min(SLOT_WAIT, limits.slot_stall))
                        if turn is not None:
                            busy = set()
            try:
                await _answer(wants, busy, turn)
            finally:
                if turn is not None:
                    turn.finish()

    async def send(frame: bytes, turn: Turn | None) -> None:
        nonlocal link_rate

        def slow() -> None:
            if turn is not None and not turn.stall():
                raise ReplyDropped()

        async with sending:
            started = trio.current_time()
            await write_paced(
                stream, frame, slow=limits.slot_stall, stall=limits.send_stall, on_slow=slow
            )
            took = trio.current_time() - started
        if len(frame) >= LINK_SAMPLE and took > 0:
            # A write returns once all but UNSENT_BYTES of it is with the kernel, which
            # sends on as fast as the link takes it: the link's speed is what was written
            # past that allowance over the time it took (a small frame only fills it).
            sample = (len(frame) - UNSENT_BYTES) / took
            link_rate = sample if link_rate is None else 0.7 * link_rate + 0.3 * sample

    async def _answer(wants: list[Want], busy: set[bytes], turn: Turn | None) -> None:
        try:
            await _answer_taken(wants, busy, turn)
        finally:
            server.answered(wants)

    async def _answer_taken(wants: list[Want], busy: set[bytes], turn: Turn | None) -> None:
        # What fits the reply's cap is read; the rest waits for the next (first in line),
        # from the start of the WANTS frame that overflows it: what was asked together
        # is compressed together (and may have been packed ahead together).
        blocks = [w.digest for w in wants if w.block and w.digest not in busy]
        # A few wants cannot carry much past the cap: read them at once (a lazy mount's
        # reader waits on this answer, and each store call is a trip to a thread).
        sizes = {} if len(blocks) <= FEW_WANTS else await source.sizes(blocks)
        carried = 0
        for i, w in enumerate(wants):
            carried += sizes.get(w.digest, 0)
            if carried > REPLY_CAP and i > 0:
                asked_with = server.groups.get(w.digest)
                start = i
                while start > 0 and server.groups.get(wants[start - 1].digest) == asked_with:
                    start -= 1
                i = start or i  # a frame larger than a reply is cut where it overflows
                server.put_back(wants[i:])
                wants = wants[:i]
                break
        # Watched before looking: a chunk that lands meanwhile is announced.
        subscriber.watch(w.digest for w in wants if not w.block)
        bases = {b for w in wants if w.block and w.digest not in busy for b in w.bases}
        ask = [w.digest for w in wants if w.digest not in busy] + sorted(bases)
        groups = dict(server.groups)
        found = await source.blobs(ask)
        # Cancelled while we read (the client got them from another peer): not sent.
        gone = server.cancelled(wants)
        wants = [w for w in wants if w.digest not in gone]
        replies: list[Reply] = []
        later: list[Want] = []
        carried = 0
        for i, w in enumerate(wants):
            if w.block and w.digest in found and w.digest not in busy:
                carried += len(found[w.digest])  # a chunk may have changed since `sizes`
                if carried > REPLY_CAP and i > 0:
                    server.put_back(wants[i:])  # the reply is full: answered next time
                    wants = wants[:i]
                    break
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
        hints = RunHints(
            bases={w.digest: w.bases for w in wants if w.block and w.bases},
            have=found,
            groups=groups,
            link_rate=link_rate,
        )
        frame = await source.encode_reply(replies, hints)
        del found, hints  # the frame is what stays in memory while the peer takes it
        if turn is not None:
            turn.carry(len(frame))
        # Counted when handed to the connection: a client that resets its stream the
        # moment it has the last block would otherwise cancel the count of what it got.
        sent = [len(r.data) for r in replies if isinstance(r, Block)]
        on_sent(len(sent), sum(sent))
        await send(frame, turn)

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
                await send(await source.encode_reply(list(haves), RunHints()), None)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            nursery.start_soon(notify)
            await answer()
            nursery.cancel_scope.cancel()  # the client is done: so are its subscriptions

    problem: str | None = None
    slow: str | None = None
    clean = False
    try:
        await run()
        clean = True
    except* FrameError as group:  # framing or msgpack: BlocksError is one
        problem = str(group.exceptions[0])
    except* (ReaderStalled, RequestLate) as group:
        slow = str(group.exceptions[0])
    except* ReplyDropped:
        pass  # its reader was slow when many were: no offence, the stream just ends
    except* StreamGone:
        pass
    finally:
        subscriber.close()
    if problem is not None:
        await abort(stream)
        await on_violation(peer, f"blocks protocol: {problem}")
    elif slow is not None:
        await abort(stream)
        if on_strike is not None:
            await on_strike(peer, f"blocks: {slow}")
    elif clean:
        await _close(stream)
    else:
        await abort(stream)


async def serve_claims(
    stream: ByteStream,
    peer: str,
    book: ClaimBook,
    on_violation: OnProblem,
    *,
    limits: PeerLimits = DEFAULT_LIMITS,
    on_strike: OnProblem | None = None,
) -> None:
    """One request and its answer. A peer that does not finish its request, or take the
    answer, within `frame_deadline`, or pushes more junk claims than it adds, gets a
    strike."""
    reader = claimwire.Reader()
    strike: str | None = None
    try:
        with trio.fail_after(limits.frame_deadline):
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
                kept = await book.keep(good, peer)
                if kept.refused > max(kept.new, 1):
                    strike = f"claims: pushed {kept.refused} claims by keys outside the policy past their budget"
                await write(stream, claimwire.encode(claimwire.Ack(kept.new)))
            else:
                raise claimwire.ClaimsError("a client sent an answer")
    except FrameError as e:  # ClaimsError is one
        await abort(stream)
        await on_violation(peer, f"claims protocol: {e}")
        return
    except StreamGone:
        await abort(stream)
        return
    except trio.TooSlowError:
        await abort(stream)
        strike = (
            f"claims: did not finish a request and take its answer in {limits.frame_deadline:.0f} s"
        )
    else:
        await _close(stream)
    if strike is not None and on_strike is not None:
        await on_strike(peer, strike)


async def _close(stream: ByteStream) -> None:
    try:
        await stream.close()
    except Exception:  # noqa: BLE001 - the peer may have gone already: the stream is finished either way
        pass
