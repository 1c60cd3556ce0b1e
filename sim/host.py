"""Simulated hosts: what a node's p2p layer offers the exchange code (open a stream to a
peer on a protocol, serve a protocol, find providers, punish), over `sim.link` streams.

The DHT is a model: `Directory` answers provider lookups from a global table after the
time an iterative Kademlia lookup takes (about log2(N)/3 round trips to random peers,
as measured for alpha=3 lookups), and a provide costs the same. Everything above it
(claims, manifests, blocks, quorum decisions, verification) is ferry's own code.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.network.stream.exceptions import StreamError

from node.exchange.peers import PeerBook
from p2p.stream import StreamGone
from sim.link import Endpoint, LinkSpec, SimStream, stream_pair

log = logging.getLogger(__name__)

Handler = Callable[[SimStream, str], Awaitable[None]]


@dataclass
class Directory:
    """The idealized DHT: who provides what, and how long finding out takes."""

    rng: random.Random
    providers: dict[str, set[str]] = field(default_factory=dict)
    size: int = 1  # nodes in the network, for the hop count
    mean_rtt: float = 0.1

    def lookup_time(self) -> float:
        hops = max(1, math.ceil(math.log2(max(2, self.size)) / 3))
        return sum(self.mean_rtt * self.rng.uniform(0.5, 1.5) for _ in range(hops))


class SimHost:
    """One node on the simulated network, named by a peer-ID-like string."""

    def __init__(self, world: World, name: str, spec: LinkSpec) -> None:
        self.world = world
        self.name = name
        self.endpoint = Endpoint(spec, world.rng)
        self.handlers: dict[str, Handler] = {}
        self.connected: set[str] = set()
        self.book = PeerBook()
        self.punished: list[tuple[str, str]] = []

    # --- the Network a fetch session uses

    def peers(self) -> list[str]:
        now = trio.current_time()
        return sorted(
            p
            for p in self.connected
            if self.world.hosts[p].endpoint.online and not self.book.banned(p, now)
        )

    async def open_stream(self, peer: str, protocol: str) -> SimStream:
        other = self.world.hosts.get(peer)
        if other is None or not other.endpoint.online or not self.endpoint.online:
            raise StreamError(f"{peer} is unreachable")
        handler = other.handlers.get(protocol)
        if handler is None:
            raise StreamError(f"{peer} does not speak {protocol}")
        if self.book.banned(peer, trio.current_time()) or other.book.banned(
            self.name, trio.current_time()
        ):
            raise StreamError(f"{peer}: banned")
        # Opening a yamux stream on an open connection costs nothing before the first write.
        mine, theirs = stream_pair(self.endpoint, other.endpoint)
        self.world.nursery.start_soon(self._serve, handler, theirs)
        return mine

    async def _serve(self, handler: Handler, stream: SimStream) -> None:
        try:
            await handler(stream, self.name)
        except (StreamError, StreamGone):
            pass  # the stream broke under the handler: what a vanished peer looks like

    def claim_holders(self, path_hash: str) -> list[str]:
        return self.peers()  # simulated nodes keep no summaries: every peer is asked

    async def providers(self, path_hash: str) -> list[str]:
        await trio.sleep(self.world.directory.lookup_time())
        found = [
            p
            for p in sorted(self.world.directory.providers.get(path_hash, ()))
            if p != self.name and self.world.hosts[p].endpoint.online
        ]
        for p in found:
            self.connect(p)
        return found

    async def provide(self, path_hash: str) -> None:
        await trio.sleep(self.world.directory.lookup_time())
        self.world.directory.providers.setdefault(path_hash, set()).add(self.name)

    async def strike(self, peer: str, problem: str) -> None:
        if self.book.strike(peer, problem, trio.current_time()):
            self.punished.append((peer, problem))
            self.disconnect(peer)

    async def punish(self, peer: str, problem: str | None) -> None:
        if problem is not None:
            self.book.punish(peer, problem, trio.current_time())
            self.punished.append((peer, problem))
        self.disconnect(peer)

    # --- wiring

    def connect(self, peer: str) -> None:
        if peer != self.name:
            self.connected.add(peer)
            self.world.hosts[peer].connected.add(self.name)

    def disconnect(self, peer: str) -> None:
        self.connected.discard(peer)
        other = self.world.hosts.get(peer)
        if other is not None:
            other.connected.discard(self.name)

    def leave(self) -> None:
        """Go offline: streams in flight break, peers forget us."""
        self.endpoint.go_offline()
        for p in list(self.connected):
            self.disconnect(p)
        for holders in self.world.directory.providers.values():
            holders.discard(self.name)

    def rejoin(self, peers: list[str]) -> None:
        self.endpoint.online = True
        for p in peers:
            self.connect(p)


class World:
    """The hosts of one simulation and the nursery their streams deliver in."""

    def __init__(self, nursery: trio.Nursery, rng: random.Random) -> None:
        self.nursery = nursery
        self.rng = rng
        self.hosts: dict[str, SimHost] = {}
        self.directory = Directory(rng)
        self.chunks: dict[
            bytes, bytes
        ] = {}  # interned chunk bytes, shared by every store (see sim.store)

    def add(self, name: str, spec: LinkSpec = LinkSpec()) -> SimHost:
        if name in self.hosts:
            raise ValueError(f"two hosts named {name}")
        h = self.hosts[name] = SimHost(self, name, spec)
        self.directory.size = len(self.hosts)
        return h
