"""The decisions of a chunk transfer, without I/O: what to ask each peer and when, when a
peer is late or stalling, when a block is bad, when a diff falls back to a plain block,
and the counting. Fed replies and `now`, it returns what to send and what to store;
`Fetch.transfer` is the loop that does the sending, storing and waiting (as the
scheduler, which this drives, it is tested without a network)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from node.exchange.progress import Progress
from node.exchange.schedule import Peer, Schedule
from p2p.blocks import BadDiff, Block, Busy, DontHave, Have, Reply
from store.chunking import digest as blake3_digest

log = logging.getLogger(__name__)

# How often a worker renews its subscriptions at a partial peer: new chunks to watch, and
# cancels for those that came from elsewhere, each in one frame per period.
QUERY_PERIOD = 5.0
# Request timeouts a worker with only subscriptions at its peer reads before looking up.
IDLE_WAIT = 3


@dataclass(frozen=True, slots=True)
class Step:
    """What a worker sends its peer now."""

    cancels: list[bytes]  # chunks it no longer wants from this peer
    query: list[bytes]  # chunks to subscribe to (want-have) at a partial peer
    ask: list[bytes]  # chunks to ask for (want-block)
    requeued: bool  # late chunks went back to the queue: other workers may take them


@dataclass(frozen=True, slots=True)
class Judged:
    """A batch of replies, judged."""

    good: list[tuple[bytes, bytes]]  # verified blocks, to store
    wire: dict[bytes, tuple[int, bool]]  # of each good block: bytes on the wire, came as a diff
    requeued: bool  # chunks went back to the queue (refused, busy, a diff that failed)


class BadPeer(Exception):
    """The peer did what no honest peer does; the message says what."""


@dataclass
class _PeerView:
    last_heard: float
    next_query: float
    heard_any: bool = False


@dataclass
class Transfer:
    sched: Schedule
    request_timeout: float
    progress: Progress
    bases: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)  # chunk -> local bases
    plain: set[bytes] = field(default_factory=set)  # chunks whose diff failed: plain from now
    last_news: float = 0.0  # when a worker last had news (blocks, refusals, HAVEs)
    _cancels: dict[Peer, list[bytes]] = field(default_factory=dict)
    _views: dict[Peer, _PeerView] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.sched.complete

    def news(self, now: float) -> None:
        self.last_news = now

    # --- one peer's worker

    def open(self, peer: Peer, now: float) -> None:
        self._views[peer] = _PeerView(last_heard=now, next_query=now)

    def close(self, peer: Peer) -> None:
        self.sched.remove_peer(peer)
        self._cancels.pop(peer, None)
        self._views.pop(peer, None)

    def step(self, peer: Peer, now: float, outstanding: Callable[[bytes], bool]) -> Step:
        """The top of a worker's loop; `outstanding(d)`: `d` is asked of the peer and not
        answered. Raises BadPeer for a peer that never answered anything in time."""
        view = self._views[peer]
        sched = self.sched
        timeout = self.request_timeout
        cancels = [d for d in self._cancels.pop(peer, []) if outstanding(d)]
        late = sched.timed_out(
            peer, now, timeout, heard=view.last_heard if view.heard_any else None
        )
        if late:
            # A peer that never sent a byte is stalling; one that did and is late now
            # is serving many (a seed in a flash crowd): its requests go to others.
            if not view.heard_any and now - view.last_heard > timeout:
                raise BadPeer(f"answered nothing for {timeout:.0f} s")
            cancels.extend(d for d in late if outstanding(d))
            self.last_news = now
        query: list[bytes] = []
        if sched.is_partial(peer) and now >= view.next_query:
            # Another fetcher, part way through: subscribe to the chunks we still want
            # (it says HAVE when it gets one), drop those that came from elsewhere.
            view.next_query = now + QUERY_PERIOD
            cancels.extend(d for d in sched.stale_queries(peer) if outstanding(d))
            query = sched.to_query(peer)
        return Step(cancels, query, sched.take(peer, now), requeued=bool(late))

    def rest(self, peer: Peer, now: float) -> float:
        """How long a worker with nothing outstanding waits for news before looking again
        (a busy peer's pause may end sooner)."""
        rest = self.sched.resting_until(peer) - now
        wait = min(self.request_timeout, rest) if rest > 0 else self.request_timeout
        endgame = self.sched.endgame_at(peer)
        if endgame is not None:
            wait = min(wait, max(0.05, endgame - now))
        return wait

    def rested(self, peer: Peer, now: float) -> None:
        self._views[peer].last_heard = now

    def read_timeout(self, peer: Peer) -> float:
        """How long a worker reads before looking up. With only subscriptions outstanding
        nothing times out: the HAVEs come when they come, and a chunk handed back by
        another worker is usually announced again before long (a crowd's idle workers
        waking every few seconds was most of the simulator's time)."""
        idle = (
            self.sched.is_partial(peer)
            and not self.sched.peers[peer].in_flight
            and not self._cancels.get(peer)
        )
        return IDLE_WAIT * self.request_timeout if idle else self.request_timeout / 2

    def heard(self, peer: Peer, now: float) -> None:
        view = self._views[peer]
        view.last_heard = now
        view.heard_any = True
        self.sched.heard(peer, now)

    def with_bases(self, ask: list[bytes]) -> dict[bytes, tuple[bytes, ...]]:
        """The chunks of `ask` to ask for as diffs, with the local chunks to diff against."""
        return {d: self.bases[d] for d in ask if d in self.bases and d not in self.plain}

    def judge(self, peer: Peer, replies: list[Reply], now: float) -> Judged:
        """Raises BadPeer for a block of the wrong size or hash (a diff that decodes
        wrong is asked for again plain: the fault may be our base)."""
        sched = self.sched
        good: list[tuple[bytes, bytes]] = []
        wire: dict[bytes, tuple[int, bool]] = {}
        requeued = False
        for r in replies:
            if isinstance(r, Block):
                expect = sched.sizes.get(r.digest)
                if expect is None or r.digest in sched.done:
                    self.progress.duplicate_bytes += r.wire
                    continue  # a duplicate from the endgame, already stored
                if r.diff and (len(r.data) != expect or blake3_digest(r.data) != r.digest):
                    # Decoded against our bases into something else: ask again, plain.
                    # A peer that lies plain too is caught by the checks below then.
                    self.fall_back(peer, r.digest)
                    requeued = True
                    continue
                if len(r.data) != expect:
                    raise BadPeer(
                        f"sent {len(r.data):,} bytes for a {expect:,}-byte chunk {r.digest.hex()[:16]}"
                    )
                if blake3_digest(r.data) != r.digest:
                    raise BadPeer(f"sent a chunk that does not hash to {r.digest.hex()[:16]}")
                good.append((r.digest, r.data))
                wire[r.digest] = (r.wire, r.diff)
            elif isinstance(r, BadDiff):
                self.fall_back(peer, r.digest)
                requeued = True
            elif isinstance(r, DontHave):
                sched.refused(peer, r.digest, now)
                requeued = True
            elif isinstance(r, Busy):
                sched.busy(peer, r.digest, now)
                requeued = True
            elif isinstance(r, Have):
                sched.has(peer, r.digest)  # this worker's next take asks for it
                self.last_news = now
        return Judged(good, wire, requeued)

    def stored(self, peer: Peer, judged: Judged, now: float) -> None:
        """The good blocks of `judged` are in the store: count them, and cancel them at
        the other peers they were asked of."""
        p = self.progress
        for d, data in judged.good:
            size, diff = judged.wire[d]
            if d in self.sched.done:
                # Another worker stored the same chunk (the endgame asked two peers)
                # while this one was storing it: count it once.
                p.duplicate_bytes += size
                continue
            p.received_bytes += size
            if diff:
                p.diff_chunks += 1
                p.diff_logical_bytes += len(data)
                p.diff_received_bytes += size
            for other in self.sched.received(peer, d, now):
                self._cancels.setdefault(other, []).append(d)
            p.chunks_done += 1
            p.bytes_done += len(data)
            p.per_peer[str(peer)] = p.per_peer.get(str(peer), 0) + len(data)

    def cancels_now(self) -> list[Peer]:
        """Peers with cancels waiting (chunks that came from elsewhere): sent at once,
        before those peers spend their uplink on them."""
        return [p for p, ds in self._cancels.items() if ds]

    def take_cancels(self, peer: Peer, outstanding: Callable[[bytes], bool]) -> list[bytes]:
        return [d for d in self._cancels.pop(peer, []) if outstanding(d)]

    def fall_back(self, peer: Peer, digest: bytes) -> None:
        log.info(
            "a diff from %s for %s did not verify: asking for it plain", peer, digest.hex()[:16]
        )
        self.plain.add(digest)
        self.sched.retry(peer, digest)

    # --- the session as a whole

    def hopeless(self, now: float) -> str | None:
        """Why the transfer cannot finish, if it cannot."""
        sched = self.sched
        if not sched.peers:
            return (
                f"{sched.remaining} chunks left and no peer to fetch them from "
                "(every peer failed or left; see `ferry peers`)"
            )
        # Only a settled picture can be hopeless; settling is rare, so check it first.
        lost = [] if any(st.in_flight for st in sched.peers.values()) else sched.unobtainable()
        # Peers fetching the same path may yet announce what is missing: give them a
        # request timeout of quiet before giving up.
        if lost and now - self.last_news >= self.request_timeout:
            return f"{len(lost)} chunks are held by none of the {len(sched.peers)} connected peers"
        return None
