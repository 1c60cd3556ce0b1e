"""A fetch session: one store path or a whole closure, from whichever peers have it.

1. For each path (following references with `closure`): collect claims (ours, every
   connected peer's, and the DHT providers' when those fall short of a quorum), decide
   with the quorum policy, and fetch the manifest blob by the digest the quorum agreed
   on. Any refusal stops the session before a single chunk is fetched.
2. Record every path with holes for its missing chunks (so a killed fetch resumes).
3. Fetch the missing chunks from all peers at once (`Schedule` spreads them by measured
   throughput), hash every block before storing it, and ban a peer that sends a bad one.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from node.exchange.schedule import BUSY_PAUSE, Schedule
from p2p import claims as claimwire
from p2p.blocks import (
    MAX_BASE_BYTES,
    BadDiff,
    Block,
    BlockClient,
    Busy,
    DontHave,
    Have,
    Reply,
    Want,
)
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.frame import FrameError
from p2p.stream import ByteStream, StreamGone, abort, read_some, write
from store.chunking import digest as blake3_digest
from store.manifest import Manifest, ManifestError
from store.path import StorePath
from trust.claim import ClaimError, SignedClaim
from trust.policy import Insufficient, QuorumPolicy, Trusted, Verdict
from trust.report import verdict_text

log = logging.getLogger(__name__)

MAX_MANIFEST = 64 << 20
MANIFEST_ROUNDS = 8  # rounds of asking busy peers for a manifest again (pauses double to 16 s)
# How often a worker renews its subscriptions at a partial peer: new chunks to watch, and
# cancels for those that came from elsewhere, each in one frame per period.
QUERY_PERIOD = 5.0
PEER_CHECK = (
    5.0  # seconds between a session's looks for newly connected peers (and for a hopeless state)
)
IDLE_WAIT = (
    3  # request timeouts a worker with only subscriptions at its peer reads before looking up
)


class FetchError(Exception):
    """A fetch that cannot finish; the message says why and what to try."""


class NoClaims(FetchError):
    def __init__(self, hash_part: str) -> None:
        self.hash_part = hash_part
        super().__init__(
            f"no peer has a claim for a path with hash {hash_part} "
            "(has a builder published it? see `ferry peers`)"
        )


class NoPolicy(Exception):
    """The node has no trust policy, so it accepts nothing."""


class FetchRefused(FetchError):
    def __init__(self, store_path: StorePath, policy: QuorumPolicy, verdict: Verdict) -> None:
        self.store_path = store_path
        self.verdict = verdict
        super().__init__(
            f"{store_path}: refused by the trust policy\n{verdict_text(policy, verdict)}"
        )


@dataclass(frozen=True)
class FetchSettings:
    request_timeout: float = 10.0  # a want unanswered this long goes to another peer
    diffs: bool = True  # send bases: chunks of an older local version to compress against
    claims_timeout: float = 5.0
    connect_timeout: float = 5.0
    order_seed: str | None = (
        None  # seeds the random chunk order (the simulator's runs repeat); None: fresh
    )
    scale: int = 1  # link bytes per chunk byte (the simulator scales chunks down; see sim.content)


@dataclass
class Progress:
    paths: int = 0
    paths_done: int = 0
    chunks: int = 0
    chunks_done: int = 0
    bytes: int = 0
    bytes_done: int = 0
    per_peer: dict[str, int] = field(default_factory=dict)  # verified bytes received from each peer
    deduplicated_chunks: int = 0  # needed by the recorded paths and already in the store
    deduplicated_bytes: int = 0
    received_bytes: int = 0  # block payloads on the wire, compressed (and diffed)
    diff_chunks: int = 0  # chunks that came as diffs against local bases
    diff_logical_bytes: int = 0  # their size once decoded
    diff_received_bytes: int = 0  # what they took on the wire
    metadata_bytes: int = 0  # claims and manifests as they came off the streams
    duplicate_bytes: int = 0  # blocks that came twice (asked of two peers at the end), on the wire
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        elapsed = max(1e-9, time.monotonic() - self.started)
        return {
            "paths": self.paths,
            "paths_done": self.paths_done,
            "chunks": self.chunks,
            "chunks_done": self.chunks_done,
            "bytes": self.bytes,
            "bytes_done": self.bytes_done,
            "per_peer": dict(self.per_peer),
            "rate": self.bytes_done / elapsed,
            "deduplicated_chunks": self.deduplicated_chunks,
            "deduplicated_bytes": self.deduplicated_bytes,
            "received_bytes": self.received_bytes,
            "diff_chunks": self.diff_chunks,
            "diff_logical_bytes": self.diff_logical_bytes,
            "diff_received_bytes": self.diff_received_bytes,
            "metadata_bytes": self.metadata_bytes,
            "duplicate_bytes": self.duplicate_bytes,
        }


@dataclass(frozen=True)
class Plan:
    """A path the quorum trusts, with its manifest."""

    store_path: StorePath
    manifest: Manifest
    verdict: Trusted
    complete: bool


class Network(Protocol):
    """What a session needs of the node (the simulator provides its own)."""

    def peers(self) -> list[str]: ...
    async def open_stream(self, peer: str, protocol: str) -> ByteStream: ...
    async def providers(self, path_hash: str) -> list[str]: ...
    async def punish(self, peer: str, problem: str) -> None: ...


class LocalPaths(Protocol):
    async def state(self, store_path: StorePath) -> tuple[Manifest, bool] | None:
        """The path's manifest and whether it is complete, if the store has it."""
        ...

    async def claims(self, hash_part: str) -> list[SignedClaim]:
        """The claims the store keeps for paths with this hash part."""
        ...

    async def learn(self, claims: list[SignedClaim], source: str) -> int: ...
    async def reserve(self, plans: Sequence[Plan], roots: set[str]) -> dict[bytes, int]:
        """Record the paths; the absent chunks (digest -> size) to fetch."""
        ...

    async def store_blocks(self, blocks: list[tuple[bytes, bytes]]) -> None: ...
    async def bases(self, plans: Sequence[Plan]) -> dict[bytes, tuple[bytes, ...]]:
        """For chunks of the planned paths, local chunks of an older version to diff against."""
        ...

    async def read_chunks(self, digests: list[bytes]) -> dict[bytes, bytes]:
        """Present, intact local chunks among `digests`."""
        ...

    async def base_manifest(self, store_path: StorePath) -> Manifest | None:
        """The manifest of the closest older version held complete (the one `bases`
        diffs against), if any: the new manifest is fetched as a diff against it."""
        ...

    async def save(self) -> None:
        """Make the stored blocks durable (called at the end, and when interrupted)."""
        ...


class Fetch:
    def __init__(
        self,
        net: Network,
        local: LocalPaths,
        policy: QuorumPolicy,
        settings: FetchSettings = FetchSettings(),
        on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
    ) -> None:
        self.net = net
        self.local = local
        self.policy = policy
        self.settings = settings
        self.progress = Progress()
        self._on_progress = on_progress
        self._changed = (
            trio.Event()
        )  # set when chunks go back to the queue, a worker ends, or all is here
        self._cancels: dict[str, list[bytes]] = {}
        self._claimed_by: dict[str, set[str]] = {}  # path hash -> peers that held claims
        self._bases: dict[
            bytes, tuple[bytes, ...]
        ] = {}  # wanted chunk -> local chunks to diff against
        self._plain: set[bytes] = set()  # chunks whose diff failed: asked for plain from now on
        self._last_news = 0.0  # when a worker last had news (blocks, refusals, HAVEs)

    # --- 1. resolve

    async def run(self, target: StorePath, *, closure: bool = False) -> list[Plan]:
        plans = await self.resolve(target, closure=closure)
        await self.complete(plans, roots={str(target)})
        return plans

    async def complete(self, plans: Sequence[Plan], roots: set[str]) -> None:
        """Record the planned paths (`roots` among them as GC roots) and fetch what they lack."""
        self.progress.paths = len(plans)
        self.progress.paths_done = sum(p.complete for p in plans)
        todo = [p for p in plans if not p.complete]
        if todo:
            missing = await self.local.reserve(todo, roots=roots)
            needed = {d: n for p in todo for _, _, n, d in p.manifest.chunk_spans()}
            self.progress.deduplicated_chunks = len(needed) - len(missing)
            self.progress.deduplicated_bytes = sum(needed.values()) - sum(missing.values())
            if self.settings.diffs and missing:
                self._bases = {
                    d: b for d, b in (await self.local.bases(todo)).items() if d in missing
                }
            await self.transfer(missing)
        self.progress.paths_done = len(plans)
        await self._report()

    async def resolve(self, target: StorePath, *, closure: bool) -> list[Plan]:
        plans: list[Plan] = []
        seen: set[str] = set()
        todo = [target]
        while todo:
            sp = todo.pop()
            if str(sp) in seen:
                continue
            seen.add(str(sp))
            plan = await self._plan(sp)
            plans.append(plan)
            if closure:
                todo.extend(r for r in plan.manifest.references if str(r) not in seen and r != sp)
        return plans

    async def _plan(self, sp: StorePath) -> Plan:
        return await self._plan_for(sp.hash_part, sp.store_dir, sp)

    async def plan_hash(self, hash_part: str, store_dir: str) -> Plan:
        """The trusted path whose hash part is `hash_part` (what a narinfo request names),
        with its manifest; nothing is stored but the claims and the path is not recorded."""
        return await self._plan_for(hash_part, store_dir, None)

    async def _plan_for(self, hash_part: str, store_dir: str, want: StorePath | None) -> Plan:
        gathered = await self.local.claims(hash_part)
        asked: set[str] = set()
        states: dict[StorePath, tuple[Manifest, bool] | None] = {}

        async def state(sp: StorePath) -> tuple[Manifest, bool] | None:
            if sp not in states:
                states[sp] = await self.local.state(sp)
            return states[sp]

        sp, verdict = self._decide(store_dir, want, gathered)
        # A path held complete, with a verdict the claims we keep already give, needs no
        # one else's word; anything less asks every connected peer.
        have = await state(sp) if sp is not None and isinstance(verdict, Trusted) else None
        if not (
            isinstance(verdict, Trusted)
            and have is not None
            and have[1]
            and have[0].digest() == verdict.manifest_digest
        ):
            gathered += await self._ask_claims(hash_part, set(self.net.peers()), asked)
            sp, verdict = self._decide(store_dir, want, gathered)
        if sp is None or isinstance(verdict, Insufficient):
            # The DHT walk costs up to `connect_timeout` (dead entries in routing tables),
            # so it is only worth it when the peers we are connected to fall short.
            providers: set[str] = set()
            with trio.move_on_after(self.settings.connect_timeout):
                providers = set(await self.net.providers(hash_part))
            gathered += await self._ask_claims(hash_part, providers - asked, asked)
            sp, verdict = self._decide(store_dir, want, gathered)
        if sp is None or verdict is None:
            raise NoClaims(hash_part)
        if not isinstance(verdict, Trusted):
            raise FetchRefused(sp, self.policy, verdict)
        await self.local.learn(list(verdict.claims), "quorum")
        have = await state(sp)
        if have is not None and have[0].digest() == verdict.manifest_digest:
            return Plan(sp, have[0], verdict, have[1])
        manifest = await self._fetch_manifest(sp, verdict)
        return Plan(sp, manifest, verdict, False)

    def _decide(
        self, store_dir: str, want: StorePath | None, claims: list[SignedClaim]
    ) -> tuple[StorePath | None, Verdict | None]:
        """The verdict for `want`, or, by hash alone, for the path the claims name: the
        trusted one if any, else the one with the most claims (a hash names one path, but
        a liar may sign another name with the same hash: it counts for nothing)."""
        if want is not None:
            return want, self.policy.decide(want, claims)
        names = Counter(
            c.claim.store_path for c in claims if c.claim.store_path.store_dir == store_dir
        )
        best: tuple[StorePath | None, Verdict | None] = (None, None)
        for sp, _ in names.most_common():
            verdict = self.policy.decide(sp, claims)
            if isinstance(verdict, Trusted):
                return sp, verdict
            if best[0] is None:
                best = (sp, verdict)
        return best

    async def _ask_claims(
        self, hash_part: str, peers: set[str], asked: set[str]
    ) -> list[SignedClaim]:
        asked |= peers
        found: list[SignedClaim] = []

        async def ask(peer: str) -> None:
            got = await self._claims_from(peer, hash_part)
            if got:
                self._claimed_by.setdefault(hash_part, set()).add(peer)
            found.extend(got)

        async with trio.open_nursery() as nursery:
            for p in peers:
                nursery.start_soon(ask, p)
        # Peers relay the claims they learned: the same claim comes from many of them,
        # and checking its signatures once is enough.
        unique = {c.encode(): c for c in found if c.claim.store_path.hash_part == hash_part}
        valid = [c for c in unique.values() if c.valid()]
        await self.local.learn(valid, "peers")
        return valid

    async def _claims_from(self, peer: str, path_hash: str) -> list[SignedClaim]:
        reader = claimwire.Reader()
        with trio.move_on_after(self.settings.claims_timeout):
            try:
                stream = await self.net.open_stream(peer, claimwire.PROTOCOL)
            except Exception as e:  # noqa: BLE001 - unreachable peer: another may answer
                log.info("cannot ask %s for claims: %s", peer, e)
                return []
            try:
                await write(stream, claimwire.encode(claimwire.Get(path_hash)))
                msg = None
                while msg is None:
                    data = await read_some(stream)
                    if not data:
                        return []
                    self.progress.metadata_bytes += len(data)
                    msg = reader.receive_data(data)
                if not isinstance(msg, claimwire.Claims):
                    raise claimwire.ClaimsError("answered GET with something other than CLAIMS")
            except FrameError as e:  # ClaimsError is one
                await abort(stream)
                await self.net.punish(peer, f"claims protocol: {e}")
                return []
            except StreamGone:
                return []
            await _close(stream)
            out = []
            for raw in msg.claims:
                try:
                    out.append(SignedClaim.decode(raw))
                except ClaimError:
                    pass  # a claim we cannot read counts for nothing; the policy lists what it used
            return out
        return []

    def _blob_peers(self, path_hash: str) -> list[str]:
        first = self._claimed_by.get(path_hash, set())
        return sorted(self.net.peers(), key=lambda p: p not in first)

    async def _fetch_manifest(self, sp: StorePath, verdict: Trusted) -> Manifest:
        digest = verdict.manifest_digest
        # After a mass rebuild most of a manifest is the old one's: names, sizes, and the
        # digests of chunks that did not change.
        old = await self.local.base_manifest(sp) if self.settings.diffs else None
        base = old.encode() if old is not None else None
        if base is not None and len(base) > MAX_BASE_BYTES:
            base = None
        peers = self._blob_peers(sp.hash_part)
        pause = BUSY_PAUSE[0]
        for _ in range(MANIFEST_ROUNDS):
            busy: list[str] = []
            for peer in peers:
                data = await self._blob_from(peer, digest, base)
                if isinstance(data, _BusyPeer):
                    busy.append(peer)
                    continue
                if data is None:
                    continue
                try:
                    m = Manifest.decode(data)
                except ManifestError as e:
                    await self.net.punish(
                        peer, f"manifest {digest.hex()[:16]} hashes right but does not decode: {e}"
                    )
                    continue
                o = verdict.outcome
                if (
                    m.store_path != sp
                    or m.nar_hash != o.nar_hash
                    or m.nar_size != o.nar_size
                    or tuple(sorted(m.references, key=str)) != o.references
                ):
                    # The builders signed a manifest that contradicts their own claim: no peer
                    # can fix that, so stop rather than ask everyone.
                    raise FetchError(
                        f"{sp}: the manifest the builders signed does not match their claim"
                    )
                return m
            if not busy:
                break
            # Every peer that has it is sending to others: ask them again after a pause.
            await trio.sleep(pause)
            pause = min(BUSY_PAUSE[1], 2 * pause)
            peers = busy
        raise FetchError(
            f"{sp}: no connected peer has its manifest {digest.hex()[:16]}… "
            "(is a builder that published it running and reachable? see `ferry peers`)"
        )

    async def _blob_from(
        self, peer: str, digest: bytes, base: bytes | None = None
    ) -> bytes | _BusyPeer | None:
        """The blob `digest` from `peer` (as a diff against `base` if given), verified;
        BUSY if the peer's upload slots are taken, None if it has no good copy."""
        client = BlockClient(max_block=MAX_MANIFEST)
        plain_again = False
        with trio.move_on_after(self.settings.request_timeout):
            try:
                stream = await self.net.open_stream(peer, BLOCKS)
            except Exception as e:  # noqa: BLE001 - unreachable: try the next peer
                log.info("cannot open a blocks stream to %s: %s", peer, e)
                return None
            try:
                if base is None:
                    await write(stream, client.want([Want(digest)]))
                else:
                    await write(
                        stream,
                        client.want([Want(digest, bases=(blake3_digest(base),))], {digest: base}),
                    )
                while True:
                    data = await read_some(stream)
                    if not data:
                        return None
                    self.progress.metadata_bytes += len(data)
                    replies = client.receive_data(data)
                    if not replies:
                        continue
                    r = replies[0]
                    await _close(stream)
                    if isinstance(r, BadDiff) or (
                        isinstance(r, Block) and r.diff and blake3_digest(r.data) != digest
                    ):
                        plain_again = True  # our base and theirs differ: no one's fault
                        break
                    if isinstance(r, Busy):
                        return BUSY
                    if isinstance(r, Block):
                        if blake3_digest(r.data) != digest:
                            await self.net.punish(
                                peer, f"sent a blob that does not hash to {digest.hex()[:16]}"
                            )
                            return None
                        return r.data
                    return None
            except FrameError as e:  # BlocksError is one
                await abort(stream)
                await self.net.punish(peer, f"blocks protocol: {e}")
                return None
            except StreamGone:
                return None
        if plain_again:
            log.info(
                "a diff of blob %s from %s did not verify: asking for it plain",
                digest.hex()[:16],
                peer,
            )
            return await self._blob_from(peer, digest)
        return None

    # --- 3. transfer

    async def transfer(self, missing: dict[bytes, int]) -> None:
        self.progress.chunks = len(missing)
        self.progress.bytes = sum(missing.values())
        if not missing:
            return
        sched = Schedule(
            dict(missing), rng=random.Random(self.settings.order_seed), scale=self.settings.scale
        )
        self._last_news = trio.current_time()
        failure: FetchError | None = None
        try:
            async with trio.open_nursery() as nursery:
                started: set[str] = set()

                def add_peers() -> None:
                    for p in self.net.peers():
                        if p not in started:
                            started.add(p)
                            sched.add_peer(p)
                            nursery.start_soon(self._worker, p, sched)

                add_peers()
                while not sched.complete:
                    failure = self._hopeless(sched)
                    if failure is not None:
                        break
                    changed = self._changed
                    # Half a request timeout at most: a hopeless fetch (a chunk nobody has)
                    # fails soon after its quiet spell, which a lazy-mount read waits on.
                    with trio.move_on_after(min(PEER_CHECK, self.settings.request_timeout / 2)):
                        await changed.wait()
                    add_peers()  # peers that connected meanwhile join in
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.local.save()
        if failure is not None:
            raise failure  # out here, not inside the nursery: callers get it bare, not in a group

    def _hopeless(self, sched: Schedule) -> FetchError | None:
        if not sched.peers:
            return FetchError(
                f"{sched.remaining} chunks left and no peer to fetch them from "
                "(every peer failed or left; see `ferry peers`)"
            )
        # Only a settled picture can be hopeless; settling is rare, so check it first.
        lost = [] if any(st.in_flight for st in sched.peers.values()) else sched.unobtainable()
        # Peers fetching the same path may yet announce what is missing: give them a
        # request timeout of quiet before giving up.
        quiet = trio.current_time() - self._last_news >= self.settings.request_timeout
        if lost and quiet:
            return FetchError(
                f"{len(lost)} chunks are held by none of the {len(sched.peers)} connected peers"
            )
        return None

    def _notify(self, workers: bool = True) -> None:
        """News: with `workers`, chunks went back to the queue, and idle workers may
        take them (waking every worker for each block was most of a crowd's CPU)."""
        self._last_news = trio.current_time()
        if workers:
            self._changed.set()
            self._changed = trio.Event()

    async def _report(self) -> None:
        if self._on_progress is not None:
            r = self._on_progress(self.progress)
            if r is not None:
                await r

    async def _worker(self, peer: str, sched: Schedule) -> None:
        try:
            stream = await self.net.open_stream(peer, BLOCKS)
        except Exception as e:  # noqa: BLE001 - the peer is gone: the others carry on
            log.info("cannot open a blocks stream to %s: %s", peer, e)
            sched.remove_peer(peer)
            self._notify()
            return
        try:
            await self._exchange(peer, stream, sched)
        except FrameError as e:  # BlocksError is one
            await abort(stream)
            await self.net.punish(peer, f"blocks protocol: {e}")
        except _BadBlock as e:
            await abort(stream)
            await self.net.punish(peer, str(e))
        except StreamGone as e:
            log.info("lost %s mid-fetch: %s", peer, e)
        except trio.Cancelled:
            # The session is over: free the server's side now, not when the connection goes.
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await abort(stream)
            raise
        else:
            await _close(stream)
        finally:
            sched.remove_peer(peer)
            self._cancels.pop(peer, None)
            self._notify()

    async def _exchange(self, peer: str, stream: ByteStream, sched: Schedule) -> None:
        client = BlockClient()
        timeout = self.settings.request_timeout
        last_heard = trio.current_time()
        next_query = last_heard
        heard_any = False
        while not sched.complete:
            now = trio.current_time()
            cancels = [d for d in self._cancels.pop(peer, []) if client.is_outstanding(d)]
            late = sched.timed_out(peer, now, timeout, heard=last_heard if heard_any else None)
            if late:
                # A peer that never sent a byte is stalling; one that did and is late now
                # is serving many (a seed in a flash crowd): its requests go to others.
                if not heard_any and now - last_heard > timeout:
                    raise _BadBlock(f"answered nothing for {timeout:.0f} s")
                cancels.extend(d for d in late if client.is_outstanding(d))
                self._notify()
            if sched.is_partial(peer) and now >= next_query:
                # Another fetcher, part way through: subscribe to the chunks we still want
                # (it says HAVE when it gets one), drop those that came from elsewhere.
                next_query = now + QUERY_PERIOD
                cancels.extend(d for d in sched.stale_queries(peer) if client.is_outstanding(d))
                query = sched.to_query(peer)
                if query:
                    await write(stream, client.want([Want(d, block=False) for d in query]))
            if cancels:
                await write(stream, client.cancel(cancels))
            ask = sched.take(peer, now)
            if ask:
                wants, prefixes = await self._wants(ask)
                await write(stream, client.want(wants, prefixes))
            if not client.outstanding:
                # Nothing this peer can do now; wake when the picture changes, or when a
                # busy peer's pause is over.
                changed = self._changed
                rest = sched.resting_until(peer) - trio.current_time()
                with trio.move_on_after(min(timeout, rest) if rest > 0 else timeout):
                    await changed.wait()
                last_heard = trio.current_time()
                continue
            # Read on until a frame completes: most reads end mid-frame, and the bookkeeping
            # above only has news once one does.
            replies: list[Reply] = []
            # Only subscriptions outstanding: nothing times out, the HAVEs come when they
            # come, and a chunk handed back by another worker is usually announced again
            # before long (a crowd's idle workers waking every few seconds was most of the
            # simulator's time). Timeouts are checked at half of one (seconds long).
            idle = (
                sched.is_partial(peer)
                and not sched.peers[peer].in_flight
                and not self._cancels.get(peer)
            )
            with trio.move_on_after(IDLE_WAIT * timeout if idle else timeout / 2):
                while not replies and client.outstanding:
                    data = await read_some(stream)
                    if not data:
                        raise StreamGone("the peer closed the stream")
                    last_heard = trio.current_time()
                    heard_any = True
                    replies = client.receive_data(data)
            good: list[tuple[bytes, bytes]] = []
            wire: dict[
                bytes, tuple[int, bool]
            ] = {}  # of each good block: bytes on the wire, came as a diff
            refused = False  # chunks went back to the queue: other workers may take them
            for r in replies:
                if isinstance(r, Block):
                    expect = sched.sizes.get(r.digest)
                    if expect is None or r.digest in sched.done:
                        self.progress.duplicate_bytes += r.wire
                        continue  # a duplicate from the endgame, already stored
                    if r.diff and (len(r.data) != expect or blake3_digest(r.data) != r.digest):
                        # Decoded against our bases into something else: ask again, plain.
                        # A peer that lies plain too is caught by the checks below then.
                        self._fall_back(sched, peer, r.digest)
                        refused = True
                        continue
                    if len(r.data) != expect:
                        raise _BadBlock(
                            f"sent {len(r.data):,} bytes for a {expect:,}-byte chunk {r.digest.hex()[:16]}"
                        )
                    if blake3_digest(r.data) != r.digest:
                        raise _BadBlock(f"sent a chunk that does not hash to {r.digest.hex()[:16]}")
                    good.append((r.digest, r.data))
                    wire[r.digest] = (r.wire, r.diff)
                elif isinstance(r, BadDiff):
                    self._fall_back(sched, peer, r.digest)
                    refused = True
                elif isinstance(r, DontHave):
                    sched.refused(peer, r.digest, trio.current_time())
                    refused = True
                elif isinstance(r, Busy):
                    sched.busy(peer, r.digest, trio.current_time())
                    refused = True
                elif isinstance(r, Have):
                    sched.has(peer, r.digest)  # this worker's next take asks for it
                    self._last_news = trio.current_time()
            if good:
                await self.local.store_blocks(good)
                now = trio.current_time()
                for d, data_ in good:
                    if d in sched.done:
                        # Another worker stored the same chunk (the endgame asked two peers)
                        # while this one was storing it: count it once.
                        self.progress.duplicate_bytes += wire[d][0]
                        continue
                    self.progress.received_bytes += wire[d][0]
                    if wire[d][1]:
                        self.progress.diff_chunks += 1
                        self.progress.diff_logical_bytes += len(data_)
                        self.progress.diff_received_bytes += wire[d][0]
                    for other in sched.received(peer, d, now):
                        self._cancels.setdefault(str(other), []).append(d)
                    self.progress.chunks_done += 1
                    self.progress.bytes_done += len(data_)
                    self.progress.per_peer[peer] = self.progress.per_peer.get(peer, 0) + len(data_)
                await self._report()
            if good or refused:
                self._notify(workers=refused or sched.complete)

    async def _wants(self, ask: list[bytes]) -> tuple[list[Want], dict[bytes, bytes]]:
        """Wants for `ask`, with bases where we hold them, and the prefixes to decode with."""
        with_bases = {d: self._bases[d] for d in ask if d in self._bases and d not in self._plain}
        prefixes: dict[bytes, bytes] = {}
        if with_bases:
            have = await self.local.read_chunks(
                sorted({b for bs in with_bases.values() for b in bs})
            )
            for d, bs in list(with_bases.items()):
                if all(b in have for b in bs) and sum(len(have[b]) for b in bs) <= MAX_BASE_BYTES:
                    prefixes[d] = b"".join(have[b] for b in bs)
                else:
                    del with_bases[d]
        return [Want(d, bases=with_bases.get(d, ())) for d in ask], prefixes

    def _fall_back(self, sched: Schedule, peer: str, digest: bytes) -> None:
        log.info(
            "a diff from %s for %s did not verify: asking for it plain", peer, digest.hex()[:16]
        )
        self._plain.add(digest)
        sched.retry(peer, digest)


class _BusyPeer:
    """`_blob_from`'s answer when the peer said BUSY."""


BUSY = _BusyPeer()


class _BadBlock(Exception):
    """The peer sent something no honest peer sends."""


async def _close(stream: ByteStream) -> None:
    try:
        await stream.close()
    except Exception:  # noqa: BLE001 - already gone: nothing to release
        pass
