"""Which chunk to ask of which peer: the fetch scheduler as a pure state machine.

Peers pull work: each asks for as many bytes as its window allows, and the window
follows the peer's measured throughput, so a fast peer ends up serving more than a slow
one without any central split. A DONT_HAVE or a timeout puts the chunk back for the other
peers; a failed peer's chunks all go back. When nothing is left to hand out, idle peers
duplicate outstanding requests of peers that have sent nothing for ENDGAME_WAIT, or that
measure ENDGAME_FASTER times slower than they and have more than ENDGAME_WAIT of work
left (endgame), and the first answer wins (the
other is cancelled). A peer that keeps sending about as fast is left to finish: on a small
update, duplicating its last requests doubled what the builders sent.

A peer is taken to hold everything until it says DONT_HAVE; from then on it is partial
(another fetcher, part way through): it is asked only for chunks it said it HAS. Its
worker subscribes to chunks still wanted (`to_query`: want-haves, which the peer answers
with HAVE once it holds the chunk) and drops the subscriptions of chunks that arrived
from elsewhere (`stale_queries`). Each missing chunk is watched by WATCHERS partial peers,
spread over them from random starting points, not by all of them: every HAVE is a
message, and a crowd of N fetchers with D neighbours each would send N x D per chunk.
Chunks are handed out in runs: consecutive chunks of a path, up to RUN_CAP bytes and
RUN_CHUNKS chunks, cut from the path's start whatever is held already (`cold_runs`), which
a peer is asked for together, whole even past the window, and compresses together (or
answers with the pack it made when it published the path: `node.local.packs`). Runs are
handed out in a random order per session, so fetchers of the same closure start from
different chunks and have something to trade, and a complete peer (a builder, a seed)
is not asked for chunks a partial peer has offered: its uplink goes to chunks nobody
else has.

A peer that answers BUSY (its upload slots are taken) is left alone for a pause that
doubles while it stays busy, and its chunks go to the others. A request is late when the
peer has been silent for a timeout, not merely when it is old: a builder serving a
crowd sends slowly but steadily, and asking someone else for what is already on its way
only sends it twice.

No I/O and no clock of its own: the caller passes `now`, so the simulator and the tests
drive it exactly like the daemon does.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from p2p.blocks import RUN_CAP

if TYPE_CHECKING:
    from store.manifest import Manifest

Peer = Hashable

MIN_WINDOW = 2 << 20
MAX_WINDOW = 32 << 20
TARGET_DELAY = 0.25  # seconds of a peer's throughput we keep in flight
ENDGAME_COPIES = 2  # at most this many peers asked for one chunk at the end
ENDGAME_WAIT = 1.0  # seconds a peer is silent, with requests out, before they are duplicated
ENDGAME_FASTER = 4.0  # or: how many times faster the idle peer measures
BUSY_PAUSE = (1.0, 16.0)  # seconds a busy peer is left alone: first, and at most (doubling)
STALLED = 6  # a peer that sends, but not what we asked, keeps a request this many timeouts
QUERY_LIMIT = 1024  # want-haves outstanding per partial peer (a server holds MAX_WANTS per stream)
WATCHERS = 8  # partial peers subscribed to (or offering) each missing chunk
SCAN = 64  # queue entries a complete peer's take looks at before giving up for now
# Chunks in a run, at most (what a server answers in one reply). 64 cut runs of small
# files at 2 MB, where xz packs 6% larger than at 4 MiB (libc6).
RUN_CHUNKS = 128


def cut_runs(sizes: Iterable[tuple[bytes, int]], limit: int = RUN_CAP) -> list[list[bytes]]:
    """Consecutive chunks cut into runs of at most `limit` bytes and RUN_CHUNKS chunks.
    A fetcher and a server that packs ahead (`node.local.packs`) cut a path's chunks
    alike, so what one asks for together is what the other packed together."""
    cut: list[list[bytes]] = []
    size = 0
    for d, n in sizes:
        if not cut or len(cut[-1]) >= RUN_CHUNKS or size + n > limit:
            cut.append([])
            size = 0
        cut[-1].append(d)
        size += n
    return cut


def cold_runs(manifest: Manifest) -> list[list[bytes]]:
    """The runs of a path fetched by a client that holds none of it: its distinct
    chunks in NAR order, cut by `cut_runs`."""
    sizes: dict[bytes, int] = {}
    for _, _, n, d in manifest.chunk_spans():
        sizes.setdefault(d, n)
    return cut_runs(sizes.items())


@dataclass
class PeerState:
    window: int = MIN_WINDOW
    in_flight: dict[bytes, float] = field(default_factory=dict)  # digest -> when asked
    in_flight_bytes: int = 0
    received_bytes: int = 0
    received_chunks: int = 0
    rate: float = 0.0  # bytes per second, smoothed
    last_receive: float | None = None
    # When bytes last came from it (a run's chunks arrive together once the whole frame
    # is in, which on a slow link takes longer than ENDGAME_WAIT): it is not silent.
    last_heard: float | None = None
    unmeasured: int = 0  # bytes received at the same instant as the last sample
    partial: bool = False  # said DONT_HAVE once: asked only for what it said it has
    has: set[bytes] = field(default_factory=set)  # said HAVE, not fetched yet
    avail: deque[bytes] = field(default_factory=deque)  # `has` in arrival order, checked lazily
    querying: set[bytes] = field(default_factory=set)  # want-haves outstanding
    resting_until: float = 0.0  # said BUSY: not asked for anything before this
    pause: float = 0.0  # the last pause after BUSY (doubles while it stays busy)


@dataclass
class Schedule:
    sizes: dict[bytes, int]  # every chunk still to fetch -> its length
    rng: random.Random | None = None  # None: hand chunks out in the order given
    # Link bytes per chunk byte: the simulator's chunks are scaled down, and windows,
    # which are about the link, must shrink with them.
    scale: int = 1
    run_bytes: int = RUN_CAP  # a run's size, at most (link bytes)
    # Runs as the caller cut them (each path's chunks by `cut_runs`, whether held or not,
    # so a path fetched cold is asked for in the runs its builder packed); chunks of
    # `sizes` they leave out are cut here.
    cut: Sequence[Sequence[bytes]] | None = None
    runs: dict[bytes, int] = field(init=False)  # digest -> its run
    _queue: deque[bytes] = field(init=False)
    _asked: dict[bytes, set[Peer]] = field(default_factory=dict)
    _refused: dict[bytes, dict[Peer, float]] = field(default_factory=dict)  # digest -> peer -> when
    _offered: dict[bytes, int] = field(
        default_factory=dict
    )  # digest -> partial peers that said HAVE
    _watching: dict[bytes, int] = field(
        default_factory=dict
    )  # digest -> partial peers subscribed to it
    peers: dict[Peer, PeerState] = field(default_factory=dict)
    done: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        limit = max(1, self.run_bytes // self.scale)
        cut: list[list[bytes]] = []
        seen: set[bytes] = set()
        for given in self.cut or ():
            run = [d for d in given if d in self.sizes and d not in seen]
            seen.update(run)
            if run:
                cut.append(run)
        cut += cut_runs(((d, n) for d, n in self.sizes.items() if d not in seen), limit)
        if self.rng is not None:
            self.rng.shuffle(cut)
        self.runs = {d: i for i, run in enumerate(cut) for d in run}
        self._queue = deque(d for run in cut for d in run)

    # --- state

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.sizes)

    @property
    def remaining(self) -> int:
        return len(self.sizes) - len(self.done)

    def unobtainable(self) -> list[bytes]:
        """Chunks no current peer can be asked for: every one is partial (said DONT_HAVE
        to something) and has not announced it. A partial peer may still get it: the
        caller waits for a quiet spell before giving up."""
        if any(not st.partial for st in self.peers.values()):
            return []  # a peer that may hold everything is still there
        return [
            d
            for d in self.sizes
            if d not in self.done
            and not self._asked.get(d)
            and not any(d in st.has for st in self.peers.values())
        ]

    def is_partial(self, peer: Peer) -> bool:
        st = self.peers.get(peer)
        return st is not None and st.partial

    # --- peers

    def add_peer(self, peer: Peer) -> None:
        self.peers.setdefault(peer, PeerState(window=MIN_WINDOW // self.scale))

    def remove_peer(self, peer: Peer) -> list[bytes]:
        """The peer is gone or failed: its requests go back to the others."""
        st = self.peers.pop(peer, None)
        if st is None:
            return []
        for d in st.has:
            if d in self._offered:
                self._offered[d] -= 1
        for d in st.querying:
            self._unwatch(d)
        back = list(st.in_flight)
        for d in back:
            self._unask(d, peer)
        return back

    # --- work

    def take(self, peer: Peer, now: float) -> list[bytes]:
        """Digests to ask `peer` for now (may be empty: window full, or nothing it can serve)."""
        st = self.peers[peer]
        out: list[bytes] = []
        if now < st.resting_until:
            return out
        budget = st.window - st.in_flight_bytes
        skipped: list[bytes] = []
        if st.partial:
            # Only what it said it has: scan its own list, not the whole queue.
            while st.avail and budget > 0:
                d = st.avail.popleft()
                if d in self.done or d not in st.has:
                    continue
                if self._asked.get(d):
                    skipped.append(d)  # in flight elsewhere; may come back
                    continue
                out.append(d)
                budget -= self.sizes[d]
            st.avail.extendleft(reversed(skipped))
        else:
            offered: list[bytes] = []
            looked = 0
            # A run is asked for whole (beyond the window and the scan if need be): split
            # over two requests, it is compressed as two, and its pack is not used.
            while self._queue and (
                (budget > 0 and looked < SCAN)
                or (out and self.runs[self._queue[0]] == self.runs[out[-1]])
            ):
                d = self._queue.popleft()
                if d in self.done or self._asked.get(d):
                    continue  # stale entry: already done or handed out since
                looked += 1
                if peer in self._refused.get(d, ()):
                    skipped.append(d)
                    continue
                if self._offered.get(d):
                    offered.append(d)  # a partial peer will serve it: to the back of the queue
                    continue
                out.append(d)
                budget -= self.sizes[d]
            self._queue.extendleft(reversed(skipped))
            self._queue.extend(offered)
            if budget > 0 and not self._queue:
                out.extend(self._endgame(peer, budget, now))
        for d in out:
            self._asked.setdefault(d, set()).add(peer)
            st.in_flight[d] = now
            st.in_flight_bytes += self.sizes[d]
        return out

    def _may_ask(self, peer: Peer, digest: bytes) -> bool:
        st = self.peers[peer]
        return digest in st.has if st.partial else peer not in self._refused.get(digest, ())

    def _endgame(self, peer: Peer, budget: int, now: float) -> list[bytes]:
        out = []
        mine = self.peers[peer].rate
        # Oldest requests first: those are the ones most likely stuck on a slow peer.
        pending = sorted(
            (
                (t, d)
                for p, st in self.peers.items()
                if p != peer
                for d, t in st.in_flight.items()
                if now - max(t, st.last_receive or t, st.last_heard or t) >= ENDGAME_WAIT
                # Only if it would take a while yet: raw rates differ by the kind of
                # block (a diff's chunk costs a hundredth of the time of a plain one),
                # and duplicating what is a moment away only sends it twice.
                or (
                    0 < st.rate * ENDGAME_FASTER <= mine
                    and st.in_flight_bytes >= st.rate * ENDGAME_WAIT
                )
            ),
            key=lambda x: x[0],
        )
        for _, d in pending:
            asked = self._asked.get(d, set())
            if budget <= 0:
                break
            if (
                peer in asked
                or len(asked) >= ENDGAME_COPIES
                or d in out
                or not self._may_ask(peer, d)
            ):
                continue
            out.append(d)
            budget -= self.sizes[d]
        return out

    def received(self, peer: Peer, digest: bytes, now: float) -> list[Peer]:
        """A verified chunk arrived. Returns the other peers it was asked of (to cancel)."""
        st = self.peers.get(peer)
        if st is not None and digest in st.in_flight:
            asked_at = st.in_flight.pop(digest)
            size = self.sizes[digest]
            st.in_flight_bytes -= size
            st.received_bytes += size
            st.received_chunks += 1
            st.pause = 0.0
            self._measure(st, size, asked_at, now)
        self._refused.pop(digest, None)
        if self._offered.pop(digest, 0):
            for o in self.peers.values():
                o.has.discard(digest)  # `avail` drops it lazily
        others = [p for p in self._asked.pop(digest, set()) if p != peer]
        for p in others:
            other = self.peers.get(p)
            if other is not None and digest in other.in_flight:
                other.in_flight.pop(digest)
                other.in_flight_bytes -= self.sizes[digest]
        self.done.add(digest)
        return others

    def _measure(self, st: PeerState, size: int, asked_at: float, now: float) -> None:
        # Throughput over the time since the previous arrival (or since asking, after an
        # idle spell): with many requests in flight, arrivals are spaced by the peer's
        # serving rate. Blocks arriving in one frame share one sample.
        start = (
            asked_at if st.last_receive is None or st.last_receive < asked_at else st.last_receive
        )
        st.unmeasured += size
        if now > start:
            sample = st.unmeasured / (now - start)
            st.rate = sample if st.rate == 0 else 0.8 * st.rate + 0.2 * sample
            st.window = int(
                min(MAX_WINDOW // self.scale, max(MIN_WINDOW // self.scale, st.rate * TARGET_DELAY))
            )
            st.unmeasured = 0
            st.last_receive = now

    def heard(self, peer: Peer, now: float) -> None:
        """Bytes came from `peer` (part of a frame, perhaps no whole block yet)."""
        st = self.peers.get(peer)
        if st is not None:
            st.last_heard = now

    def refused(self, peer: Peer, digest: bytes, now: float = 0.0) -> None:
        """DONT_HAVE (to a block want or a have-query): ask someone else."""
        self._refused.setdefault(digest, {})[peer] = now
        st = self.peers.get(peer)
        if st is not None:
            st.partial = True
            if digest in st.has:
                st.has.discard(digest)
                if digest in self._offered:
                    self._offered[digest] -= 1
            self._unquery(st, digest)
        self._unask(digest, peer)

    def busy(self, peer: Peer, digest: bytes, now: float) -> None:
        """BUSY: the peer holds it but sends to others now; leave it alone for a while."""
        st = self.peers.get(peer)
        if st is not None and now >= st.resting_until:
            # One pause per refusal, however many wants it answered BUSY at once.
            st.pause = min(BUSY_PAUSE[1], max(BUSY_PAUSE[0], 2 * st.pause))
            st.resting_until = now + st.pause
        self._unask(digest, peer)

    def endgame_at(self, peer: Peer) -> float | None:
        """When `peer`, idle, could next duplicate another peer's request (None: no
        request is out elsewhere, or there is still work in the queue)."""
        if self._queue:
            return None
        times = [
            max(t, st.last_receive or t, st.last_heard or t) + ENDGAME_WAIT
            for p, st in self.peers.items()
            if p != peer
            for t in st.in_flight.values()
        ]
        return min(times) if times else None

    def resting_until(self, peer: Peer) -> float:
        st = self.peers.get(peer)
        return st.resting_until if st is not None else 0.0

    def has(self, peer: Peer, digest: bytes) -> None:
        """HAVE: the peer holds it now (it may have fetched it since it said otherwise)."""
        st = self.peers.get(peer)
        if st is None:
            return
        self._unquery(st, digest)
        if digest in self.sizes and digest not in self.done and digest not in st.has:
            st.has.add(digest)
            st.avail.append(digest)
            self._offered[digest] = self._offered.get(digest, 0) + 1
            self._refused.get(digest, {}).pop(peer, None)

    def to_query(self, peer: Peer, limit: int = QUERY_LIMIT) -> list[bytes]:
        """Chunks still wanted that a partial peer is not yet asked to announce, up to
        `limit` outstanding; marked as asked."""
        st = self.peers.get(peer)
        if st is None or not st.partial or len(st.querying) >= limit:
            return []
        if len(st.querying) + len(st.has) >= self.remaining:
            return []  # asked about everything left already (skip the scan)
        # A fair share of the subscriptions the missing chunks need, and some slack.
        partial = sum(1 for o in self.peers.values() if o.partial)
        limit = min(limit, WATCHERS * self.remaining // max(1, partial) + 16)
        queue = list(self._queue)
        start = self.rng.randrange(len(queue)) if self.rng is not None and queue else 0
        out: list[bytes] = []
        for d in queue[start:] + queue[:start]:
            if len(st.querying) + len(out) >= limit:
                break
            if (
                d in self.done
                or d in st.has
                or d in st.querying
                or d in st.in_flight
                or self._watching.get(d, 0) + self._offered.get(d, 0) >= WATCHERS
            ):
                continue
            out.append(d)
        st.querying.update(out)
        for d in out:
            self._watching[d] = self._watching.get(d, 0) + 1
        return out

    def _unquery(self, st: PeerState, digest: bytes) -> None:
        if digest in st.querying:
            st.querying.discard(digest)
            self._unwatch(digest)

    def _unwatch(self, digest: bytes) -> None:
        n = self._watching.get(digest, 0) - 1
        if n > 0:
            self._watching[digest] = n
        else:
            self._watching.pop(digest, None)

    def stale_queries(self, peer: Peer) -> list[bytes]:
        """Want-haves of `peer` for chunks that arrived since: to cancel."""
        st = self.peers.get(peer)
        if st is None:
            return []
        out = [d for d in st.querying if d in self.done]
        for d in out:
            self._unquery(st, d)
        return out

    def retry(self, peer: Peer, digest: bytes) -> None:
        """Ask again (from anyone, `peer` included): its diff did not verify."""
        self._unask(digest, peer)

    def timed_out(
        self, peer: Peer, now: float, timeout: float, heard: float | None = None
    ) -> list[bytes]:
        """Requests of `peer` that are late: they go back to the queue. Late means older
        than `timeout` (plus the time its measured rate needs for what is in flight) with
        the peer silent since `heard` for a timeout; a peer that keeps sending gets
        STALLED times as long."""
        st = self.peers.get(peer)
        if st is None:
            return []
        limit = timeout + (st.in_flight_bytes / st.rate if st.rate > 0 else 0.0)
        if heard is not None and now - heard <= timeout:
            limit *= STALLED
        late = [d for d, t in st.in_flight.items() if now - t > limit]
        for d in late:
            self._unask(d, peer)
        return late

    def _unask(self, digest: bytes, peer: Peer) -> None:
        st = self.peers.get(peer)
        if st is not None and digest in st.in_flight:
            st.in_flight.pop(digest)
            st.in_flight_bytes -= self.sizes[digest]
        if st is not None and st.partial and digest in st.has:
            st.avail.append(digest)
        asked = self._asked.get(digest)
        if asked is not None:
            asked.discard(peer)
            if not asked:
                del self._asked[digest]
        if digest not in self.done and not self._asked.get(digest):
            self._queue.appendleft(digest)
