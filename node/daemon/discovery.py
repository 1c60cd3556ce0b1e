"""How a node finds peers and is found: bootstrap peers kept connected, DHT provider
records (written by one task, renewed hourly), claims pushed to peers and gossiped; and
the network as a fetch session sees it (node.exchange.fetch.Network)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack

import msgpack
import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetwork
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT, _encode_key
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from node.daemon import api, relay
from node.daemon.config import NodeConfig
from node.daemon.nodestore import NodeStore
from node.daemon.quiet import Quiet
from node.exchange.peers import PeerBook
from p2p import claimwire
from p2p.host import Notifee
from p2p.stream import ByteStream
from store.path import StorePath
from trust.claim import ClaimError, SignedClaim

log = logging.getLogger(__name__)

GOSSIP_TOPIC = "ferry/claims/1"
GOSSIP_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
BOOTSTRAP_RETRY = 30.0
BOOTSTRAP_MIN_GAP = 2.0
# Seconds between provider records of everything held: records live 48 hours at the peers
# that keep them (py-libp2p, like go-libp2p, which reprovides every 22). Each record costs
# a DHT walk and a record at each of the closest peers: 3.4 KB of messages (about 5 KB on
# the wire) with two peers, ten times that among dozens. Hourly, a home node holding
# 5,000 paths sent at least 25 MB an hour.
REPROVIDE = 22 * 3600.0
PROVIDE_QUIET = 2.0  # seconds without a gateway request before provider records are written
PROVIDE_LATEST = 120.0  # ...but a path waits no longer than this for its record
NEARBY_ASKED = 16  # connected peers asked for provider records before a DHT walk
NEARBY_WAIT = 2.0
DISCONNECT_WAIT = 5.0  # seconds a banned peer's connection may take to close


async def start_gossip(host: IHost, stack: AsyncExitStack) -> tuple[Pubsub, GossipSub]:
    """Gossipsub on `host`, running until `stack` closes."""
    router = GossipSub(GOSSIP_PROTOCOLS, 6, 4, 12, heartbeat_interval=1)
    pubsub = Pubsub(host, router)
    await stack.enter_async_context(background_trio_service(pubsub))
    # The router is a service of its own: without it running there is no heartbeat, so
    # its message cache never shifts, keeps every claim ever seen and replays them all to
    # each new subscriber (144 KB to a client joining a network of 38 paths, for a 20 KB
    # update), and the mesh is never mended.
    await stack.enter_async_context(background_trio_service(router))
    await pubsub.wait_until_ready()
    return pubsub, router


class Discovery:
    def __init__(self, host: IHost, config: NodeConfig, book: PeerBook, store: NodeStore) -> None:
        self.host = host
        self.config = config
        self.book = book
        self.store = store
        self.peer_id = host.get_id()
        self.dht: KadDHT | None = None
        self.pubsub: Pubsub | None = None
        self.relays: relay.Relays | None = None  # set by the node: dialing through relays
        # Set once every bootstrap peer has been tried: a fetch asked for at start-up waits
        # for it rather than finding nobody to ask.
        self.bootstrapped = trio.Event()
        self._lost = trio.Event()  # a connection closed: bootstrap peers are redialled soon
        # Peers newly connected, in either direction: their summaries are followed.
        self._joined, self._joins = trio.open_memory_channel[str](math.inf)
        host.get_network().register_notifee(_Gate(book, self._on_lost, self._joined.send_nowait))
        # Provider records are written by one task of the node's own: a DHT walk can take
        # seconds (dead routing-table entries), and no fetch or publish should wait for it.
        self._to_provide, self._providing = trio.open_memory_channel[tuple[StorePath, float]](
            math.inf
        )
        self._queued: set[StorePath] = set()
        # Held by the gateway while Nix waits on it (see quiet.py).
        self.upkeep = Quiet(PROVIDE_QUIET, PROVIDE_LATEST)

    async def start(self, stack: AsyncExitStack) -> None:
        """The DHT and gossip services, as configured (inside the host's run)."""
        if self.config.dht:
            self.dht = KadDHT(self.host, DHTMode.SERVER)
            await stack.enter_async_context(background_trio_service(self.dht))
        if self.config.gossip:
            self.pubsub, _ = await start_gossip(self.host, stack)

    def run(self, nursery: trio.Nursery) -> None:
        """Its tasks, in the node's nursery."""
        nursery.start_soon(self._keep_bootstrap)
        nursery.start_soon(self._follow_summaries)
        if self.pubsub is not None:
            nursery.start_soon(self._gossip_listener)
        if self.dht is not None:
            nursery.start_soon(self._reprovide)
            nursery.start_soon(self._provider)

    # --- staying connected

    async def _keep_bootstrap(self) -> None:
        infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in self.config.bootstrap]
        while True:
            async with trio.open_nursery() as nursery:
                for info in infos:
                    if (
                        info.peer_id != self.peer_id
                        and info.peer_id not in self.host.get_connected_peers()
                    ):
                        nursery.start_soon(self.connect, info)
            self.bootstrapped.set()
            # A peer that drops us at once is not redialled in a loop.
            await trio.sleep(BOOTSTRAP_MIN_GAP)
            with trio.move_on_after(BOOTSTRAP_RETRY - BOOTSTRAP_MIN_GAP):
                await self._lost.wait()
            self._lost = trio.Event()

    def _on_lost(self) -> None:
        self._lost.set()

    async def _follow_summaries(self) -> None:
        """Each connected peer's summary, read for as long as it stays connected."""
        summaries = self.store.summaries
        async with trio.open_nursery() as nursery:
            for p in self.host.get_connected_peers():  # connected before this task ran
                nursery.start_soon(summaries.follow, str(p), self.open_stream, self.punish)
            async for peer in self._joins:
                if peer != str(self.peer_id):
                    nursery.start_soon(summaries.follow, peer, self.open_stream, self.punish)

    async def connect(self, info: PeerInfo) -> bool:
        """Dial the peer at its direct addresses; failing that, through a relay (one its
        relayed addresses name, or a bootstrap peer), punching through if it can."""
        if self.book.banned(str(info.peer_id), trio.current_time()):
            return False
        direct = [a for a in info.addrs if not relay.is_circuit(a)]
        circuits = [a for a in info.addrs if relay.is_circuit(a)]
        unpunchable = self.relays is not None and self.relays.unpunchable(str(info.peer_id))
        if (direct or not circuits) and not (circuits and unpunchable):
            # A peer that gave relayed addresses is likely behind NAT: its others are
            # given less time.
            wait = relay.DIRECT_FIRST if circuits else self.config.request_timeout
            if await self._dial(PeerInfo(info.peer_id, direct), wait):
                return True
        if self.relays is None or not (circuits or self.config.bootstrap):
            return False
        if not await self.relays.dial(str(info.peer_id), circuits):
            return False
        if self.dht is not None:
            await self.dht.add_peer(info.peer_id)
        return True

    async def _dial(self, info: PeerInfo, wait: float) -> bool:
        with trio.move_on_after(wait):
            try:
                await self.host.connect(info)
            except Exception as e:  # noqa: BLE001 - unreachable or refusing: retried later
                log.info("cannot connect to %s: %s", info.peer_id, e)
                return False
            if self.dht is not None:
                await self.dht.add_peer(info.peer_id)
            log.info("connected to %s", info.peer_id)
            return True
        log.info("connecting to %s timed out", info.peer_id)
        return False

    # --- the network as a fetch session sees it

    def peers(self) -> list[str]:
        now = trio.current_time()
        return [
            str(p) for p in self.host.get_connected_peers() if not self.book.banned(str(p), now)
        ]

    def claim_holders(self, path_hash: str) -> list[str]:
        """Connected peers whose summary names the path (node.daemon.summaries)."""
        held = set(self.store.summaries.holders(path_hash))
        return [p for p in self.peers() if p in held]

    async def open_stream(self, peer: str, protocol: str) -> ByteStream:
        return await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])

    async def providers(self, path_hash: str) -> list[str]:
        if self.dht is None:
            return []
        key = _dht_key(path_hash)
        found = await self._providers_nearby(key) or await self.dht.find_providers(key)
        out: dict[str, PeerInfo] = {}
        for info in found:  # py-libp2p returns duplicates
            if info.peer_id != self.peer_id:
                out.setdefault(str(info.peer_id), info)
        connected = {str(p) for p in self.host.get_connected_peers()}
        for peer, info in out.items():
            if peer not in connected and info.addrs:
                await self.connect(info)
        return [p for p in out if p in {str(c) for c in self.host.get_connected_peers()}]

    async def _providers_nearby(self, key: str) -> list[PeerInfo]:
        """Provider records the connected peers hold, asked of all of them at once.

        py-libp2p's walk first looks for the peers closest to the key, dialing each one
        it hears of, and a node behind NAT (whose addresses peers pass on) is dialed
        until the dial times out. In a small group the records sit on the bootstrap
        nodes everyone is connected to: asking those first answers in a round trip."""
        assert self.dht is not None
        store = self.dht.provider_store
        raw_key = _encode_key(key)
        found: list[PeerInfo] = []

        async def ask(peer: ID) -> None:
            with trio.move_on_after(NEARBY_WAIT):
                try:
                    # A private method, but the one that asks a single peer.
                    providers, _ = await store._get_providers_from_peer_with_closers(peer, raw_key)
                except Exception as e:  # noqa: BLE001 - no DHT there, or gone: the walk follows
                    log.debug("%s gave no provider records: %s", peer, e)
                    return
                found.extend(providers)

        async with trio.open_nursery() as nursery:
            for peer in self.host.get_connected_peers()[:NEARBY_ASKED]:
                nursery.start_soon(ask, peer)
        return found

    async def punish(self, peer: str, problem: str | None) -> None:
        """Ban the peer for `problem` and disconnect it (None: it is banned already)."""
        if problem is not None:
            self.book.punish(peer, problem, trio.current_time())
        if self.dht is not None:
            # Or a DHT query dials it again.
            self.dht.routing_table.remove_peer(ID.from_base58(peer))
        # First, so nothing more is read or sent for it while the connection closes (its
        # streams' handlers went on answering and held a reply each: +80 MB for 128 of
        # them). The handler that found the offence may be one of these: the disconnect
        # is shielded from its cancel.
        for scope in self.book.get(peer).serving:
            scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(DISCONNECT_WAIT):
            try:
                await self.host.disconnect(ID.from_base58(peer))
            except Exception as e:  # noqa: BLE001 - already gone: the ban is what matters
                log.debug("disconnecting %s: %s", peer, e)

    async def strike(self, peer: str, problem: str) -> None:
        """Count a lesser offence against the peer; the last strike bans it."""
        if self.book.strike(peer, problem, trio.current_time()):
            await self.punish(peer, None)

    def report(self) -> api.Peers:
        """Connected peers and those the book remembers (banned ones), with traffic."""
        now = trio.current_time()
        connected = {str(p) for p in self.host.get_connected_peers()}
        out = []
        for peer in sorted(connected | set(self.book.records)):
            r = self.book.get(peer)
            try:
                addrs = [str(a) for a in self.host.get_peerstore().addrs(ID.from_base58(peer))]
            except Exception:  # noqa: BLE001 - a peer we only remember for its ban has no addresses left
                addrs = []
            out.append(
                api.PeerRow(
                    peer_id=peer,
                    connected=peer in connected,
                    addrs=tuple(addrs),
                    sent_bytes=r.sent_bytes,
                    received_bytes=r.received_bytes,
                    bad=r.bad,
                    banned_for=max(0.0, r.banned_until - now),
                    last_problem=r.last_problem,
                )
            )
        return api.Peers(tuple(out))

    # --- being found

    async def announce(self, signed: Sequence[SignedClaim], complete: Sequence[StorePath]) -> None:
        """Tell peers about new claims (push and gossip); queue new complete paths for the DHT."""
        if signed:
            payload = claimwire.encode(claimwire.Push(tuple(c.encode() for c in signed)))
            async with trio.open_nursery() as nursery:
                for peer in self.peers():
                    nursery.start_soon(self._push, peer, payload)
            if self.pubsub is not None:
                try:
                    await self.pubsub.publish(
                        GOSSIP_TOPIC, msgpack.packb([c.encode() for c in signed])
                    )
                except Exception as e:  # noqa: BLE001 - best effort: pushes and queries carry the claims too
                    log.info("gossip publish failed: %s", e)
        if self.dht is not None:
            for sp in complete:
                if sp not in self._queued:
                    self._queued.add(sp)
                    self._to_provide.send_nowait((sp, trio.current_time()))

    async def _provider(self) -> None:
        assert self.dht is not None
        async for sp, queued in self._providing:
            await self.upkeep.wait(queued)
            self._queued.discard(sp)
            with trio.move_on_after(self.config.request_timeout):
                try:
                    await self.dht.provide(_dht_key(sp.hash_part))
                    log.info("DHT: provider record for %s written", sp)
                except Exception as e:  # noqa: BLE001 - the DHT is one way of many to be found
                    log.info("DHT provide of %s failed: %s", sp, e)

    async def _push(self, peer: str, payload: bytes) -> None:
        with trio.move_on_after(self.config.request_timeout):
            try:
                stream = await self.open_stream(peer, claimwire.PROTOCOL)
                await stream.write(payload)
                await stream.read(64)
                await stream.close()
            except Exception as e:  # noqa: BLE001 - the peer will ask for the claims when it needs them
                log.info("pushing claims to %s failed: %s", peer, e)

    async def _gossip_listener(self) -> None:
        assert self.pubsub is not None
        sub = await self.pubsub.subscribe(GOSSIP_TOPIC)
        me = self.host.get_id().to_bytes()
        while True:
            msg = await sub.get()
            if msg.from_id == me:
                continue  # our own announcement, delivered back: nothing to learn
            try:
                raw = msgpack.unpackb(
                    msg.data, raw=False, max_array_len=claimwire.MAX_CLAIMS, max_map_len=0
                )
                found = [SignedClaim.decode(r) for r in raw if isinstance(r, bytes)]
            except (ClaimError, ValueError, TypeError, msgpack.UnpackException):
                continue  # gossip is a hint: junk is dropped, never trusted
            # Two signature checks a claim: on a thread, not between the node's other work.
            valid = await trio.to_thread.run_sync(_valid, found)
            await self.store.learn(valid, "gossip")

    async def _reprovide(self) -> None:
        while True:
            complete = await self.store.read(self.store.reader.complete_paths)
            await self.announce([], [StorePath.parse(p) for p in complete])
            await trio.sleep(REPROVIDE)


def _valid(claims: list[SignedClaim]) -> list[SignedClaim]:
    return [c for c in claims if c.valid()]


class _Gate(Notifee):
    """Closes any connection with a banned peer, whoever dialed it; reports new and lost
    ones."""

    def __init__(
        self, book: PeerBook, on_lost: Callable[[], None], on_joined: Callable[[str], None]
    ) -> None:
        self.book = book
        self.on_lost = on_lost
        self.on_joined = on_joined

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = str(conn.muxed_conn.peer_id)
        if self.book.banned(peer, trio.current_time()):
            log.info("closing a connection with banned peer %s", peer)
            await conn.close()
            return
        self.on_joined(peer)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.on_lost()


def _dht_key(path_hash: str) -> str:
    return f"/ferry/path/{path_hash}"
