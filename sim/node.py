"""A simulated ferry node: a `SimHost`, an in-memory store, and ferry's own block and
claim servers and fetch sessions on top. Misbehaving nodes differ only in the store
they serve from (or in never answering)."""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from libp2p.network.stream.exceptions import StreamError

from node.exchange.fetch import Fetch, FetchError, FetchRefused, FetchSettings
from node.exchange.limits import DEFAULT as DEFAULT_LIMITS
from node.exchange.schedule import Schedule
from node.exchange.server import serve_blocks, serve_claims
from node.exchange.uplink import DEFAULT_SLOTS, Uplink
from p2p import claimwire, frame, witnesswire
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.stream import StreamGone, read_some
from sim.content import Release
from sim.host import SimHost, World
from sim.link import LinkSpec, SimStream
from sim.store import SimStore
from store.chunking import digest as blake3_digest
from store.path import StorePath
from trust.equivocation import EquivocationError
from trust.logged import MAX_LOGGED, LoggedClaim, LoggedError
from trust.policy import Insufficient, QuorumPolicy
from trust.witness import Caught, Released, Witness

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    SEED = "seed"  # holds the closure from the start (a builder that published it)
    BUILDER = "builder"  # signs and serves the closure
    LIAR = "lying-builder"  # signs and serves other contents under the same store paths
    SYBIL = "sybil"  # a key outside the trusted set, signing the liar's result
    FETCHER = "fetcher"  # wants the closure
    CORRUPT = "corrupt-peer"  # serves chunks with a flipped byte
    TRUNCATE = "truncating-peer"  # serves chunks one byte short
    STALL = "stalling-peer"  # accepts block requests and never answers
    SERVER = "central-server"  # the baseline's server


class Spoiling(SimStore):
    """Serves claims and manifests honestly (so it is asked), chunks spoiled."""

    def __init__(self, how: Role) -> None:
        super().__init__()
        self.how = how

    async def blobs(self, digests: list[bytes]) -> dict[bytes, bytes]:
        got = await super().blobs(digests)
        for d, data in got.items():
            if d in self.chunks:
                got[d] = (
                    data[:-1] if self.how is Role.TRUNCATE else bytes([data[0] ^ 0xFF]) + data[1:]
                )
        return got


@dataclass
class NodeResult:
    name: str
    role: str
    completed: bool = False
    started: float | None = None
    completion_time: float | None = None  # seconds from its start
    bytes_up: int = 0
    bytes_down: int = 0
    bad_blocks_received: int = 0  # peers punished for what they sent
    bad_blocks_stored: int = 0  # chunks in the store that do not hash to their digest
    duplicate_bytes: int = 0  # link bytes of blocks that came twice (the endgame's price)
    paths_trusted: list[str] = field(default_factory=list)  # "store path nar-hash"
    error: str | None = None


class SimNode:
    def __init__(
        self,
        world: World,
        name: str,
        role: Role,
        spec: LinkSpec,
        policy: QuorumPolicy | None,
        store: SimStore | None = None,
        settings: FetchSettings = FetchSettings(),
        scale: int = 1,
        slots: int = DEFAULT_SLOTS,
        order_seed: str | None = None,
    ) -> None:
        self.world = world
        self.role = role
        self.host: SimHost = world.add(name, spec)
        self.store = (
            store
            if store is not None
            else (Spoiling(role) if role in (Role.CORRUPT, Role.TRUNCATE) else SimStore())
        )
        self.store.scale = scale
        self.store.interned = world.chunks
        self.uplink = Uplink(slots)
        # A reply's pieces are measured in real bytes, which the links count `scale` times
        # over: the stall limits stretch alike, or every reply would look stalled.
        self.limits = dataclasses.replace(
            DEFAULT_LIMITS,
            slot_stall=DEFAULT_LIMITS.slot_stall * scale,
            send_stall=DEFAULT_LIMITS.send_stall * scale,
        )
        self.policy = policy
        self.settings = settings
        self.order_seed = order_seed  # the chunk order of its fetches: runs repeat
        self.result = NodeResult(name, role.value)
        self.refused = False
        self.attempt = trio.CancelScope()  # the fetch attempt under way (churn cancels it)
        self.host.handlers[claimwire.PROTOCOL] = self._serve_claims
        self.host.handlers[claimwire.PROTOCOL_GETS] = self._serve_claims
        self.host.handlers[BLOCKS] = self._stall if role is Role.STALL else self._serve_blocks
        # The witness (trust.witness), as node.daemon.witness runs it: what a node is told
        # of a builder's log it passes to its peers, once; a lie it catches, likewise.
        self.witness = Witness()
        self.caught_at: float | None = None
        self._told: set[bytes] = set()  # digests of what it passed on already
        self.host.handlers[witnesswire.PUSH_PROTOCOL] = self._serve_logged
        self.host.handlers[witnesswire.PROOFS_PROTOCOL] = self._serve_proof

    @property
    def name(self) -> str:
        return self.host.name

    def hold(self, release: Release, claims: dict[StorePath, list]) -> None:
        for p in release.paths:
            self.store.add_path(p.manifest, p.chunks, claims.get(p.manifest.store_path, []))

    # --- serving

    async def _violation(self, peer: str, problem: str) -> None:
        await self.host.punish(peer, problem)

    async def _serve_blocks(self, stream: SimStream, peer: str) -> None:
        await serve_blocks(
            stream,
            peer,
            self.store,
            self._violation,
            lambda n, size: None,
            self.uplink,
            limits=self.limits,
        )

    async def _serve_claims(self, stream: SimStream, peer: str) -> None:
        await serve_claims(stream, peer, self.store, self._violation)

    async def _stall(self, stream: SimStream, peer: str) -> None:
        while await read_some(stream):
            pass  # reads every want, answers none, until the client gives up

    # --- witnessing

    async def _one(self, stream: SimStream) -> bytes | None:
        decoder = frame.FrameDecoder(MAX_LOGGED)
        while data := await read_some(stream):
            for payload in decoder.feed(data):
                return payload
        return None

    async def _serve_logged(self, stream: SimStream, peer: str) -> None:
        data = await self._one(stream)
        if data is None or not self._first(data):
            return
        try:
            logged = LoggedClaim.decode(data)
        except LoggedError:
            return
        self.pass_on(witnesswire.PUSH_PROTOCOL, data, but=peer)
        self._caught(self.witness.observe(logged))

    async def _serve_proof(self, stream: SimStream, peer: str) -> None:
        data = await self._one(stream)
        if data is None or not self._first(data):
            return
        try:
            self._caught(self.witness.receive_proof(data))
        except EquivocationError:
            return

    def _first(self, data: bytes) -> bool:
        digest = blake3_digest(data)
        if digest in self._told:
            return False
        self._told.add(digest)
        return True

    def _caught(self, caught: Caught | Released | None) -> None:
        if isinstance(caught, Caught) and self.caught_at is None:
            self.caught_at = trio.current_time()
            self._first(caught.encoded)
            self.pass_on(witnesswire.PROOFS_PROTOCOL, caught.encoded)

    def pass_on(self, protocol: str, data: bytes, but: str | None = None) -> None:
        for peer in self.host.peers():
            if peer != but:
                self.world.nursery.start_soon(self.tell, peer, protocol, data)

    async def tell(self, peer: str, protocol: str, data: bytes) -> None:
        try:
            stream = await self.host.open_stream(peer, protocol)
            await stream.write(frame.encode(data, MAX_LOGGED))
            await stream.close()
        except (StreamError, StreamGone):
            pass  # gone: the others carry it

    # --- fetching

    def _schedule(self, sizes: dict[bytes, int], cut: Sequence[Sequence[bytes]] | None) -> Schedule:
        # Windows and frames count link bytes: scaled chunks stand for larger ones, so
        # runs are cut here, to scaled sizes (the fetcher's `cut` is in real bytes).
        return Schedule(sizes, rng=random.Random(self.order_seed), scale=self.store.scale)

    async def fetch(self, root: StorePath) -> bool:
        """One attempt at the closure of `root`; the result records how it went."""
        assert self.policy is not None
        if self.result.started is None:
            self.result.started = trio.current_time()
        policy = dataclasses.replace(self.policy, caught=self.witness.keys_caught())
        fetch = Fetch(self.host, self.store, policy, self.settings, schedule=self._schedule)
        try:
            plans = await fetch.run(root, closure=True)
        except FetchRefused as e:
            # A conflict is a verdict, not a failure to retry: the policy refuses what the
            # builders signed. Too few signatures may be too few answers yet: try again.
            self.result.error = str(e)
            self.refused = not isinstance(e.verdict, Insufficient)
            return False
        except FetchError as e:
            self.result.error = str(e)
            return False
        finally:
            self.result.duplicate_bytes += fetch.progress.duplicate_bytes * self.store.scale
        self.result.completed = True
        self.result.error = None
        self.result.completion_time = trio.current_time() - self.result.started
        self.result.paths_trusted = sorted(f"{p.store_path} {p.manifest.nar_hash}" for p in plans)
        for p in plans:
            self.world.nursery.start_soon(self.host.provide, p.store_path.hash_part)
        return True

    def finish(self) -> NodeResult:
        r = self.result
        r.bytes_up = self.host.endpoint.up.bytes
        r.bytes_down = self.host.endpoint.down.bytes
        r.bad_blocks_received = len(self.host.punished)
        r.bad_blocks_stored = sum(
            1 for d, data in self.store.chunks.items() if blake3_digest(data) != d
        )
        return r
