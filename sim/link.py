"""In-memory streams between simulated nodes, shaped by their links.

A stream is two one-way pipes. A write is cut into segments; each segment waits for its
turn on the sender's uplink and the receiver's downlink (first come, first served, so
streams sharing a link share it roughly fairly), then arrives one-way latency (plus
jitter) later. Loss is modelled as TCP experiences it: a lost segment arrives a
retransmission timeout late, bytes are never dropped or reordered within a stream.
This is a model of TCP over a bottleneck link, not a packet simulator: there is no slow
start and no queue limit.

Time is trio's clock, so under `trio.testing.MockClock(autojump_threshold=0)` an hour
of transfer takes as long as the code that runs in it.
"""

from __future__ import annotations

import math
import random
import weakref
from collections import deque
from dataclasses import dataclass

import trio
from libp2p.network.stream.exceptions import StreamError, StreamReset

SEGMENT = 1 << 20  # link bytes sent as one unit: the granularity of link sharing
HEAD = 16 << 10  # link bytes of a write's first segment
RTO = 0.2  # seconds a lost segment is late (Linux's minimum retransmission timeout)


@dataclass(frozen=True)
class LinkSpec:
    """A node's access link. Rates in bytes per second; 0 means unlimited."""

    up: float = 0.0
    down: float = 0.0
    latency: float = 0.0  # one-way, seconds
    jitter: float = 0.0  # up to this much more, uniformly
    loss: float = 0.0  # probability a segment needs a retransmission

    @classmethod
    def home(cls, rng: random.Random) -> LinkSpec:
        """100 Mbit/s down, 20 Mbit/s up, 20-80 ms round trips."""
        return cls(
            up=20e6 / 8, down=100e6 / 8, latency=rng.uniform(0.010, 0.040), jitter=0.002, loss=0.001
        )


class Port:
    """One direction of a node's link: when it is next free."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.bytes = 0

    def book(self, start: float, n: int) -> float:
        """Reserve the link for n bytes from `start` on; when they are through."""
        self.bytes += n
        if self.rate <= 0:
            return start
        begin = max(start, self.free_at)
        self.free_at = begin + n / self.rate
        return self.free_at


class Endpoint:
    """What a pipe needs of each node: its ports and latency, and the randomness."""

    def __init__(self, spec: LinkSpec, rng: random.Random) -> None:
        self.spec = spec
        self.up = Port(spec.up)
        self.down = Port(spec.down)
        self.rng = rng
        self.online = True
        # In opening order (a WeakSet's order would differ between runs of one seed).
        self.streams: list[weakref.ref[SimStream]] = []

    def opened(self, stream: SimStream) -> None:
        self.streams.append(weakref.ref(stream))
        if len(self.streams) > 256 and len(self.streams) & (len(self.streams) - 1) == 0:
            self.streams = [r for r in self.streams if r() is not None]

    def go_offline(self) -> None:
        """Every stream of this node breaks, as when its machine drops off the network."""
        self.online = False
        for ref in self.streams:
            s = ref()
            if s is not None:
                s._break("the peer went away")
        self.streams = []


class _Pipe:
    def __init__(self) -> None:
        self.data: deque[bytes] = deque()  # arrived, not yet read
        self.in_flight: deque[tuple[float, bytes | None]] = (
            deque()
        )  # (arrival, segment or EOF), in order
        self.eof = False
        self.closing = False
        self.broken: str | None = None
        self.arrived = trio.Event()  # set when a segment is sent or the pipe breaks
        self.last_arrival = 0.0  # keeps segments in order despite jitter

    def land(self, now: float) -> None:
        """Everything due by `now` arrives, in the order it was sent."""
        while self.in_flight and self.in_flight[0][0] <= now:
            _, seg = self.in_flight.popleft()
            if seg is None:
                self.eof = True
            else:
                self.data.append(seg)

    def wake(self) -> None:
        self.arrived.set()
        self.arrived = trio.Event()


class SimStream:
    """ferry's `ByteStream` over two pipes."""

    def __init__(self, src: Endpoint, dst: Endpoint, out: _Pipe, inp: _Pipe) -> None:
        self._src, self._dst = src, dst
        self._out, self._in = out, inp
        self._buf = b""
        src.opened(self)

    async def read(self, n: int | None = None) -> bytes:
        # The reader lands what is due itself, sleeping until the next arrival: no task
        # per pipe, and one wake-up per segment.
        pipe = self._in
        while not self._buf:
            if pipe.broken:
                raise StreamReset(pipe.broken)
            pipe.land(trio.current_time())
            if pipe.data:
                self._buf = pipe.data.popleft()
                break
            if pipe.eof:
                return b""
            arrived = pipe.arrived
            if pipe.in_flight:
                with trio.move_on_at(pipe.in_flight[0][0]):
                    await arrived.wait()  # or the pipe breaks first
            else:
                await arrived.wait()
        n = n or len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    async def write(self, data: bytes) -> None:
        if self._out.broken or self._in.broken:
            raise StreamReset("stream reset")
        if self._out.closing:
            raise StreamError("write after close")
        if not (self._src.online and self._dst.online):
            self._break("the peer went away")
            raise StreamReset("the peer went away")
        view = memoryview(data)
        # What a write stands for on the link: more than its length for a reply frame of
        # scaled chunks (see sim.content and sim.store.LinkBytes).
        logical = getattr(data, "link_bytes", len(data))
        # A small head first: on a link shared by many streams every one of them hears
        # from the sender within a round of heads, as with TCP, not a round of segments.
        head = max(1, len(view) * HEAD // logical) if logical > 2 * HEAD else len(view)
        rest = len(view) - head
        segments = max(1, math.ceil((logical - HEAD) / SEGMENT)) if rest else 0
        step = math.ceil(rest / segments) if segments else 0
        cuts = [0, head, *range(head + step, len(view), step)] if rest else [0]
        for a, b in zip(cuts, cuts[1:] + [len(view)]):
            seg = bytes(view[a:b])
            cost = logical * len(seg) // len(view)
            now = trio.current_time()
            sent = self._src.up.book(now, cost)
            through = self._dst.down.book(sent, cost)
            spec_a, spec_b = self._src.spec, self._dst.spec
            delay = (
                spec_a.latency
                + spec_b.latency
                + self._src.rng.uniform(0, spec_a.jitter + spec_b.jitter)
            )
            if self._src.rng.random() < max(spec_a.loss, spec_b.loss):
                delay += RTO + 2 * delay
            # The sender's buffer drains at its uplink pace: block until the segment is on
            # the wire, so a fast writer cannot race ahead of its link.
            if sent > now:
                await trio.sleep_until(sent)
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            self._send(seg, through + delay)

    def _send(self, seg: bytes | None, arrival: float) -> None:
        pipe = self._out
        arrival = max(arrival, pipe.last_arrival)
        pipe.last_arrival = arrival
        pipe.in_flight.append((arrival, seg))
        if len(pipe.in_flight) == 1:
            pipe.wake()  # a reader waiting on an empty pipe learns when to look

    async def close(self) -> None:
        if not self._out.closing:
            self._out.closing = True
            self._send(None, trio.current_time())

    async def reset(self) -> None:
        self._break("stream reset by the peer")

    def _break(self, why: str) -> None:
        for p in (self._out, self._in):
            if p.broken is None:
                p.broken = why
            p.wake()


def stream_pair(a: Endpoint, b: Endpoint) -> tuple[SimStream, SimStream]:
    """Two ends of a stream from a to b."""
    ab, ba = _Pipe(), _Pipe()
    return SimStream(a, b, ab, ba), SimStream(b, a, ba, ab)
