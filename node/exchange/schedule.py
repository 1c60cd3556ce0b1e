"""Which chunk to ask of which peer: the fetch scheduler as a pure state machine.

Peers pull work: each asks for as many bytes as its window allows, and the window
follows the peer's measured throughput, so a fast peer ends up serving more than a slow
one without any central split. A DONT_HAVE or a timeout puts the chunk back for the other
peers; a failed peer's chunks all go back. When nothing is left to hand out, idle peers
duplicate the slowest outstanding requests (endgame), and the first answer wins.

No I/O and no clock of its own: the caller passes `now`, so the simulator and the tests
drive it exactly like the daemon does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

Peer = Hashable

MIN_WINDOW = 2 << 20
MAX_WINDOW = 32 << 20
TARGET_DELAY = 0.25  # seconds of a peer's throughput we keep in flight
ENDGAME_COPIES = 2  # at most this many peers asked for one chunk at the end


@dataclass
class PeerState:
    window: int = MIN_WINDOW
    in_flight: dict[bytes, float] = field(default_factory=dict)  # digest -> when asked
    in_flight_bytes: int = 0
    received_bytes: int = 0
    received_chunks: int = 0
    rate: float = 0.0  # bytes per second, smoothed
    last_receive: float | None = None
    unmeasured: int = 0  # bytes received at the same instant as the last sample


@dataclass
class Schedule:
    sizes: dict[bytes, int]  # every chunk still to fetch -> its length
    _queue: deque[bytes] = field(init=False)
    _asked: dict[bytes, set[Peer]] = field(default_factory=dict)
    _refused: dict[bytes, set[Peer]] = field(default_factory=dict)
    peers: dict[Peer, PeerState] = field(default_factory=dict)
    done: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._queue = deque(self.sizes)

    # --- state

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.sizes)

    @property
    def remaining(self) -> int:
        return len(self.sizes) - len(self.done)

    def unobtainable(self) -> list[bytes]:
        """Chunks every current peer said it lacks (or no peer is left to ask)."""
        live = set(self.peers)
        return [d for d in self.sizes if d not in self.done
                and not self._asked.get(d) and live <= self._refused.get(d, set())]

    # --- peers

    def add_peer(self, peer: Peer) -> None:
        self.peers.setdefault(peer, PeerState())

    def remove_peer(self, peer: Peer) -> list[bytes]:
        """The peer is gone or failed: its requests go back to the others."""
        st = self.peers.pop(peer, None)
        if st is None:
            return []
        back = list(st.in_flight)
        for d in back:
            self._unask(d, peer)
        return back

    # --- work

    def take(self, peer: Peer, now: float) -> list[bytes]:
        """Digests to ask `peer` for now (may be empty: window full, or nothing it can serve)."""
        st = self.peers[peer]
        out: list[bytes] = []
        budget = st.window - st.in_flight_bytes
        skipped: list[bytes] = []
        while self._queue and budget > 0:
            d = self._queue.popleft()
            if d in self.done or self._asked.get(d):
                continue  # stale entry: already done or handed out since
            if peer in self._refused.get(d, ()):
                skipped.append(d)
                continue
            out.append(d)
            budget -= self.sizes[d]
        self._queue.extendleft(reversed(skipped))
        if budget > 0 and not self._queue:
            out.extend(self._endgame(peer, budget))
        for d in out:
            self._asked.setdefault(d, set()).add(peer)
            st.in_flight[d] = now
            st.in_flight_bytes += self.sizes[d]
        return out

    def _endgame(self, peer: Peer, budget: int) -> list[bytes]:
        out = []
        # Oldest requests first: those are the ones most likely stuck on a slow peer.
        pending = sorted(
            ((t, d) for p, st in self.peers.items() if p != peer for d, t in st.in_flight.items()),
            key=lambda x: x[0],
        )
        for _, d in pending:
            asked = self._asked.get(d, set())
            if budget <= 0:
                break
            if peer in asked or len(asked) >= ENDGAME_COPIES or peer in self._refused.get(d, ()) or d in out:
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
            self._measure(st, size, asked_at, now)
        others = [p for p in self._asked.pop(digest, set()) if p != peer]
        for p in others:
            o = self.peers.get(p)
            if o is not None and digest in o.in_flight:
                o.in_flight.pop(digest)
                o.in_flight_bytes -= self.sizes[digest]
        self.done.add(digest)
        return others

    def _measure(self, st: PeerState, size: int, asked_at: float, now: float) -> None:
        # Throughput over the time since the previous arrival (or since asking, after an
        # idle spell): with many requests in flight, arrivals are spaced by the peer's
        # serving rate. Blocks arriving in one frame share one sample.
        start = asked_at if st.last_receive is None or st.last_receive < asked_at else st.last_receive
        st.unmeasured += size
        if now > start:
            sample = st.unmeasured / (now - start)
            st.rate = sample if st.rate == 0 else 0.8 * st.rate + 0.2 * sample
            st.window = int(min(MAX_WINDOW, max(MIN_WINDOW, st.rate * TARGET_DELAY)))
            st.unmeasured = 0
            st.last_receive = now

    def refused(self, peer: Peer, digest: bytes) -> None:
        """DONT_HAVE: ask someone else."""
        self._refused.setdefault(digest, set()).add(peer)
        self._unask(digest, peer)

    def retry(self, peer: Peer, digest: bytes) -> None:
        """Ask again (from anyone, `peer` included): its diff did not verify."""
        self._unask(digest, peer)

    def timed_out(self, peer: Peer, now: float, timeout: float) -> list[bytes]:
        """Requests of `peer` older than `timeout`: they go back to the queue."""
        st = self.peers.get(peer)
        if st is None:
            return []
        late = [d for d, t in st.in_flight.items() if now - t > timeout]
        for d in late:
            self._unask(d, peer)
        return late

    def _unask(self, digest: bytes, peer: Peer) -> None:
        st = self.peers.get(peer)
        if st is not None and digest in st.in_flight:
            st.in_flight.pop(digest)
            st.in_flight_bytes -= self.sizes[digest]
        asked = self._asked.get(digest)
        if asked is not None:
            asked.discard(peer)
            if not asked:
                del self._asked[digest]
        if digest not in self.done and not self._asked.get(digest):
            self._queue.appendleft(digest)
