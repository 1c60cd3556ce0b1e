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
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from node.exchange.download import BlockSink, NewSchedule, download, fresh_schedule
from node.exchange.network import Network
from node.exchange.progress import Progress
from node.exchange.schedule import BUSY_PAUSE, cold_runs
from p2p import claimwire
from p2p.blocks import (
    MAX_BASE_BYTES,
    BadDiff,
    Block,
    BlockClient,
    Busy,
    Want,
)
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.frame import FrameError
from p2p.stream import StreamGone, abort, finish, read_some, write
from store.chunking import digest as blake3_digest
from store.manifest import Manifest, ManifestError
from store.path import StorePath
from trust.claim import ClaimError, SignedClaim
from trust.policy import Insufficient, QuorumPolicy, Trusted, Verdict
from trust.report import verdict_text

log = logging.getLogger(__name__)

MAX_MANIFEST = 64 << 20
BATCH_MANIFEST_TURNS = 3  # peers asked in turn for a batch's manifests (then: path by path)
REACH_PATHS = 4  # paths whose providers a fetch looks up when no connected peer holds them
MANIFEST_ROUNDS = 8  # rounds of asking busy peers for a manifest again (pauses double to 16 s)


class FetchError(Exception):
    """A fetch that cannot finish; the message says why and what to try."""


class NoClaims(FetchError):
    """Nobody asked has any claim for the path: not a trust refusal, just unknown."""

    def __init__(self, hash_part: str, asked: str = "no peer asked") -> None:
        self.hash_part = hash_part
        super().__init__(
            f"no claim for a path with hash {hash_part}: {asked} has one "
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
    # To find and dial the providers of a manifest no connected peer holds: a DHT lookup,
    # then a dial that may go through a relay and a hole punch (node.daemon.relay).
    reach_timeout: float = 12.0


@dataclass(frozen=True)
class Plan:
    """A path the quorum trusts, with its manifest."""

    store_path: StorePath
    manifest: Manifest
    verdict: Trusted
    complete: bool


class LocalPaths(BlockSink, Protocol):
    """The store as a whole fetch session sees it: paths and claims besides chunks."""

    async def state(self, store_path: StorePath) -> tuple[Manifest, bool] | None:
        """The path's manifest and whether it is complete, if the store has it."""
        ...

    async def claims(self, hash_part: str) -> list[SignedClaim]:
        """The claims the store keeps for paths with this hash part."""
        ...

    async def claims_many(self, hash_parts: Sequence[str]) -> list[list[SignedClaim]]:
        """`claims` for each hash part, in order, at one go."""
        ...

    async def states(self, sps: Sequence[StorePath]) -> list[tuple[Manifest, bool] | None]:
        """`state` of each, in order, at one go."""
        ...

    async def learn(self, claims: list[SignedClaim], source: str) -> int: ...
    async def reserve(self, plans: Sequence[Plan], roots: set[str]) -> dict[bytes, int]:
        """Record the paths; the absent chunks (digest -> size) to fetch."""
        ...

    async def bases(self, plans: Sequence[Plan]) -> dict[bytes, tuple[bytes, ...]]:
        """For chunks of the planned paths, local chunks of an older version to diff against."""
        ...

    async def base_manifest(self, store_path: StorePath) -> Manifest | None:
        """The manifest of the closest older version held complete (the one `bases`
        diffs against), if any: the new manifest is fetched as a diff against it."""
        ...


class Fetch:
    def __init__(
        self,
        net: Network,
        local: LocalPaths,
        policy: QuorumPolicy,
        settings: FetchSettings = FetchSettings(),
        on_progress: Callable[[Progress], Awaitable[None] | None] | None = None,
        schedule: NewSchedule | None = None,
    ) -> None:
        """`schedule` makes the transfer's scheduler from the chunk sizes it wants
        (default: chunks in a fresh random order); the simulator seeds and scales it."""
        self.net = net
        self._new_schedule = schedule or fresh_schedule
        self.local = local
        self.policy = policy
        self.settings = settings
        self.progress = Progress()
        self._on_progress = on_progress
        self._claimed_by: dict[str, set[str]] = {}  # path hash -> peers that held claims
        self._bases: dict[bytes, tuple[bytes, ...]] = {}  # wanted chunk -> local bases
        self._plain: set[bytes] = set()  # chunks whose diff failed: asked for plain from now on
        # Asks the given peers where in their builders' logs these claims are (a policy that
        # requires logs counts a claim only then); how many it learned of. The node sets it.
        self.prove: Callable[[list[SignedClaim], list[str]], Awaitable[int]] | None = None

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
            reserved = await self.local.reserve(todo, roots=roots)
            # In the paths' order: consecutive chunks of a file are asked for, and
            # compressed, together (a run; see `node.exchange.schedule`).
            missing = {
                d: reserved[d]
                for p in todo
                for _, _, _, d in p.manifest.chunk_spans()
                if d in reserved
            }
            needed = {d: n for p in todo for _, _, n, d in p.manifest.chunk_spans()}
            self.progress.deduplicated_chunks = len(needed) - len(missing)
            self.progress.deduplicated_bytes = sum(needed.values()) - sum(missing.values())
            if self.settings.diffs and missing:
                self._bases = {
                    d: b for d, b in (await self.local.bases(todo)).items() if d in missing
                }
            runs = [run for p in todo for run in cold_runs(p.manifest)]
            got = -1
            while True:
                try:
                    await self.transfer(missing, runs)
                    break
                except FetchError:
                    # Chunks no connected peer holds. The plans may have come from what
                    # this node kept, and the peer with the chunks left since (a relay's
                    # limit ended its connection, say) or was never dialed: the paths'
                    # providers are, and what is still missing is asked of them, for as
                    # long as each try gets chunks.
                    if got == self.progress.chunks_done or not await self._reach_providers(todo):
                        raise
                    got = self.progress.chunks_done
                reserved = await self.local.reserve(todo, roots=roots)
                missing = {d: n for d, n in missing.items() if d in reserved}
        self.progress.paths_done = len(plans)
        await self._report()

    async def _reach_providers(self, todo: Sequence[Plan]) -> bool:
        """Dial the providers of the paths (the first REACH_PATHS of them); whether any
        peer connected that was not before."""
        before = set(self.net.peers())
        with trio.move_on_after(self.settings.reach_timeout):
            for p in todo[:REACH_PATHS]:
                await self.net.providers(p.store_path.hash_part)
        return bool(set(self.net.peers()) - before)

    async def resolve(self, target: StorePath, *, closure: bool) -> list[Plan]:
        """Plans for `target` and, with `closure`, everything it refers to. A closure is
        planned a level of references at a time: paths held complete from the claims
        kept here, the others' claims and manifests in one batch per peer (`plan_many`);
        what a batch leaves out is planned alone (`_plan`: the DHT, refusals, retries).
        Path by path, a mass rebuild of 18 paths cost 36 claims streams and 18 blocks
        streams, most of its bytes on the wire."""
        plans: list[Plan] = []
        seen = {str(target)}
        level = [target]
        while level:
            got: dict[str, Plan] = {}
            if len(level) > 1:
                rest = []
                for sp in level:
                    held = await self._held(sp)
                    if held is not None:
                        got[str(sp)] = held
                    else:
                        rest.append(sp)
                for store_dir in {sp.store_dir for sp in rest}:
                    some = [sp for sp in rest if sp.store_dir == store_dir]
                    many = await self.plan_many([sp.hash_part for sp in some], store_dir)
                    for sp in some:
                        p = many.get(sp.hash_part)
                        if p is not None and p.store_path == sp:
                            got[str(sp)] = p
            below: list[StorePath] = []
            for sp in level:
                plan = got.get(str(sp)) or await self._plan(sp)
                plans.append(plan)
                if closure:
                    for r in plan.manifest.references:
                        if str(r) not in seen:
                            seen.add(str(r))
                            below.append(r)
            level = below
        return plans

    async def _held(self, sp: StorePath) -> Plan | None:
        """`sp`'s plan if it is held complete and the claims kept here trust it as is."""
        got, verdict = self._decide(sp.store_dir, sp, await self.local.claims(sp.hash_part))
        if got is None or not isinstance(verdict, Trusted):
            return None
        have = await self.local.state(got)
        if have is None or not have[1] or have[0].digest() != verdict.manifest_digest:
            return None
        await self.local.learn(list(verdict.claims), "quorum")
        return Plan(got, have[0], verdict, True)

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
        # one else's word; anything less asks the connected peers that hold claims for it.
        have = await state(sp) if sp is not None and isinstance(verdict, Trusted) else None
        if not (
            isinstance(verdict, Trusted)
            and have is not None
            and have[1]
            and have[0].digest() == verdict.manifest_digest
        ):
            gathered += await self._ask_claims(
                hash_part, set(self.net.claim_holders(hash_part)), asked
            )
            sp, verdict = self._decide(store_dir, want, gathered)
        if sp is None or isinstance(verdict, Insufficient):
            # The DHT walk costs up to `connect_timeout` (dead entries in routing tables),
            # so it is only worth it when the peers we are connected to fall short.
            providers: set[str] = set()
            with trio.move_on_after(self.settings.connect_timeout):
                providers = set(await self.net.providers(hash_part))
            gathered += await self._ask_claims(hash_part, providers - asked, asked)
            sp, verdict = self._decide(store_dir, want, gathered)
        if sp is not None and isinstance(verdict, Insufficient) and self.prove is not None:
            lacking = [
                c for c in gathered if c.claim.store_path == sp and self.policy.wants_logs(c)
            ]
            holders = sorted(self._claimed_by.get(hash_part, set()) | asked)
            if lacking and await self.prove(lacking, holders):
                sp, verdict = self._decide(store_dir, want, gathered)
        if sp is None or verdict is None or not gathered:
            # Nothing signed anywhere we looked: the path is unknown, not refused.
            raise NoClaims(hash_part, f"none of the {len(asked)} peers asked")
        if not isinstance(verdict, Trusted):
            raise FetchRefused(sp, self.policy, verdict)
        await self.local.learn(list(verdict.claims), "quorum")
        have = await state(sp)
        if have is not None and have[0].digest() == verdict.manifest_digest:
            return Plan(sp, have[0], verdict, have[1])
        manifest = await self._fetch_manifest(sp, verdict)
        return Plan(sp, manifest, verdict, False)

    async def plan_many(self, hash_parts: Sequence[str], store_dir: str) -> dict[str, Plan]:
        """Plans for as many of `hash_parts` as the claims kept here and those of the
        connected peers that list them make trusted: a closure's paths asked at
        `claimwire.MAX_GETS` a stream and their manifests on one blocks stream per peer,
        where `plan_hash` costs two streams a path. A hash left out (unknown, refused, a
        peer that did not answer) is for `plan_hash` to decide, with the DHT, the
        refusal's reasons and the retries."""
        hashes = list(dict.fromkeys(hash_parts))
        gathered = dict(zip(hashes, await self.local.claims_many(hashes), strict=True))
        by_peer: dict[str, list[str]] = {}
        for h in hashes:
            # A peer that left its last request unanswered would hold up the whole batch:
            # what only it can answer is left to plan_hash.
            for peer in self.net.book.quiet_last(self.net.claim_holders(h))[0]:
                by_peer.setdefault(peer, []).append(h)
        found: list[SignedClaim] = []
        async with trio.open_nursery() as nursery:
            for peer, asked in by_peer.items():
                for i in range(0, len(asked), claimwire.MAX_GETS):
                    nursery.start_soon(
                        self._gets_from, peer, asked[i : i + claimwire.MAX_GETS], found
                    )
        unique = {c.encode(): c for c in found}
        valid = [c for c in unique.values() if c.valid()]
        await self.local.learn(valid, "peers")
        for c in valid:
            gathered[c.claim.store_path.hash_part].append(c)

        trusted: list[tuple[StorePath, Trusted]] = []
        for h in hashes:
            sp, verdict = self._decide(store_dir, None, gathered[h])
            if sp is not None and isinstance(verdict, Trusted):
                trusted.append((sp, verdict))
        await self.local.learn([c for _, v in trusted for c in v.claims], "quorum")
        plans: dict[str, Plan] = {}
        wanted: list[tuple[StorePath, Trusted, list[str]]] = []
        states = await self.local.states([sp for sp, _ in trusted])
        for (sp, verdict), have in zip(trusted, states, strict=True):
            if have is not None and have[0].digest() == verdict.manifest_digest:
                plans[sp.hash_part] = Plan(sp, have[0], verdict, have[1])
            else:
                wanted.append((sp, verdict, self._blob_peers(sp.hash_part)))
        # A peer may hold a path's claims (it relays them) but not its manifest: what the
        # first peer lacks is asked of the next one, as `_fetch_manifest` does.
        for turn in range(BATCH_MANIFEST_TURNS):
            ask: dict[str, list[tuple[StorePath, Trusted]]] = {}
            for sp, verdict, peers in wanted:
                if sp.hash_part not in plans and turn < len(peers):
                    ask.setdefault(peers[turn], []).append((sp, verdict))
            async with trio.open_nursery() as nursery:
                for peer, some in ask.items():
                    nursery.start_soon(self._manifests_from, peer, some, plans)
        return plans

    async def _gets_from(self, peer: str, hashes: list[str], found: list[SignedClaim]) -> None:
        """GETS `hashes` of `peer`: the claims it answers for each, into `found`. Answers
        that arrived count even when the rest do not (a busy peer, the deadline): the
        hashes left unanswered are for `plan_hash`."""
        answers = claimwire.Answers(len(hashes))
        done = False
        stream = None  # the deadline may pass while it opens
        with trio.move_on_after(self.settings.claims_timeout) as deadline:
            try:
                stream = await self.net.open_stream(peer, claimwire.PROTOCOL_GETS)
            except Exception as e:  # noqa: BLE001 - unreachable, or speaks only /1: plan_hash asks
                log.info("cannot ask %s for claims in a batch: %s", peer, e)
                return
            try:
                await write(stream, claimwire.encode(claimwire.Gets(tuple(hashes))))
                while not done:
                    data = await read_some(stream)
                    if not data:
                        break
                    self.progress.metadata_bytes += len(data)
                    done = answers.receive_data(data)
            except FrameError as e:  # ClaimsError is one
                await abort(stream)
                await self.net.punish(peer, f"claims protocol: {e}")
                return
            except StreamGone:
                pass
            else:
                if done:
                    await finish(stream)
        if stream is not None and not done:
            with trio.move_on_after(1.0):
                await abort(stream)  # the rest would answer nobody
        if answers.answers:
            self.net.book.answered(peer, True)
        elif deadline.cancelled_caught:
            await self._unanswered(peer)
        if len(answers.answers) < len(hashes):
            log.info(
                "%s answered %d of the %d hashes asked in a batch in time",
                peer,
                len(answers.answers),
                len(hashes),
            )
        for h, raws in zip(hashes, answers.answers, strict=False):
            for raw in raws:
                try:
                    c = SignedClaim.decode(raw)
                except ClaimError:
                    continue  # counts for nothing, as in `_claims_from`
                if c.claim.store_path.hash_part == h:
                    found.append(c)
                    self._claimed_by.setdefault(h, set()).add(peer)

    async def _manifests_from(
        self, peer: str, wanted: list[tuple[StorePath, Trusted]], plans: dict[str, Plan]
    ) -> None:
        """The manifests of `wanted` from `peer` on one stream, plain, into `plans`; those
        it lacks or sends wrong are left out."""
        by_digest = {v.manifest_digest: (sp, v) for sp, v in wanted}
        client = BlockClient(max_block=MAX_MANIFEST)
        # Each as a diff against the old version's manifest where one is here (after a
        # mass rebuild, most of a manifest is the old one's); a peer without it answers
        # plainly, and a diff that does not decode leaves the path to plan_hash.
        wants: list[Want] = []
        bases: dict[bytes, bytes] = {}
        for d, (sp, _) in by_digest.items():
            old = await self.local.base_manifest(sp) if self.settings.diffs else None
            base = old.encode() if old is not None else None
            if base is not None and len(base) <= MAX_BASE_BYTES:
                bases[blake3_digest(base)] = base
                wants.append(Want(d, bases=(blake3_digest(base),)))
            else:
                wants.append(Want(d))
        with trio.move_on_after(self.settings.request_timeout):
            try:
                stream = await self.net.open_stream(peer, BLOCKS)
            except Exception as e:  # noqa: BLE001 - unreachable: plan_hash tries the others
                log.info("cannot open a blocks stream to %s: %s", peer, e)
                return
            try:
                await write(stream, client.want(wants, bases))
                while client.outstanding:
                    data = await read_some(stream)
                    if not data:
                        return
                    self.progress.metadata_bytes += len(data)
                    for r in client.receive_data(data):
                        if not isinstance(r, Block):
                            continue  # BUSY, DONT_HAVE, a bad diff: plan_hash asks again
                        if blake3_digest(r.data) != r.digest:
                            if r.diff:
                                continue  # our base and theirs differ: no one's fault
                            await self.net.punish(
                                peer, f"sent a blob that does not hash to {r.digest.hex()[:16]}"
                            )
                            return
                        sp, verdict = by_digest[r.digest]
                        m = await self._decode_manifest(peer, r.digest, r.data)
                        if m is not None and _matches(m, sp, verdict):
                            plans[sp.hash_part] = Plan(sp, m, verdict, False)
            except FrameError as e:  # BlocksError is one
                await abort(stream)
                await self.net.punish(peer, f"blocks protocol: {e}")
                return
            except StreamGone:
                return
            await finish(stream)

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

        async def ask_all(some: list[str]) -> None:
            async with trio.open_nursery() as nursery:
                for p in some:
                    nursery.start_soon(ask, p)

        # Peers that left their last request unanswered are asked too, but waited for
        # only when those that answer have not settled the path between them.
        answering, quiet = self.net.book.quiet_last(sorted(peers))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_all, quiet)
            await ask_all(answering)
            if quiet and self._settled(hash_part, found):
                nursery.cancel_scope.cancel()
        # Peers relay the claims they learned: the same claim comes from many of them,
        # and checking its signatures once is enough.
        unique = {c.encode(): c for c in found if c.claim.store_path.hash_part == hash_part}
        valid = [c for c in unique.values() if c.valid()]
        await self.local.learn(valid, "peers")
        return valid

    def _settled(self, hash_part: str, claims: list[SignedClaim]) -> bool:
        """Whether these claims (those whose signatures check out) make a path with this
        hash trusted."""
        claims = [c for c in claims if c.valid()]
        names = {c.claim.store_path for c in claims if c.claim.store_path.hash_part == hash_part}
        return any(isinstance(self.policy.decide(sp, claims), Trusted) for sp in names)

    async def _unanswered(self, peer: str) -> None:
        """`peer` let a claims request time out: asked last from now on, and, from the
        third time in a row, struck (the third strike disconnects it). A busy honest
        peer answers some in time, which wipes the count."""
        self.net.book.answered(peer, False)
        if self.net.book.get(peer).unanswered > 2:
            await self.net.strike(peer, "left claims requests unanswered")

    async def _claims_from(self, peer: str, path_hash: str) -> list[SignedClaim]:
        got = await self._claims_or_silence(peer, path_hash)
        if got is None:
            await self._unanswered(peer)
            return []
        self.net.book.answered(peer, True)
        return got

    async def _claims_or_silence(self, peer: str, path_hash: str) -> list[SignedClaim] | None:
        """The claims `peer` answers with; None if it did not answer in time."""
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
            await finish(stream)
            out = []
            for raw in msg.claims:
                try:
                    out.append(SignedClaim.decode(raw))
                except ClaimError:
                    pass  # a claim we cannot read counts for nothing; the policy lists what it used
            return out
        return None

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
        looked_up = False
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
                m = await self._decode_manifest(peer, digest, data)
                if m is None:
                    continue
                if not _matches(m, sp, verdict):
                    # The builders signed a manifest that contradicts their own claim: no peer
                    # can fix that, so stop rather than ask everyone.
                    raise FetchError(
                        f"{sp}: the manifest the builders signed does not match their claim"
                    )
                return m
            if not busy:
                if looked_up:
                    break
                # No connected peer holds it (the claims came by gossip): those that wrote
                # provider records for it may, once dialed (directly or through a relay).
                looked_up = True
                found: list[str] = []
                with trio.move_on_after(self.settings.reach_timeout):
                    found = await self.net.providers(sp.hash_part)
                peers = [p for p in found if p not in peers]
                if not peers:
                    break
                continue
            # Every peer that has it is sending to others: ask them again after a pause.
            await trio.sleep(pause)
            pause = min(BUSY_PAUSE[1], 2 * pause)
            peers = busy
        raise FetchError(
            f"{sp}: no connected peer has its manifest {digest.hex()[:16]}… "
            "(is a builder that published it running and reachable? see `ferry peers`)"
        )

    async def _decode_manifest(self, peer: str, digest: bytes, data: bytes) -> Manifest | None:
        self.progress.manifest_bytes += len(data)
        try:
            return Manifest.decode(data)
        except ManifestError as e:
            await self.net.punish(
                peer, f"manifest {digest.hex()[:16]} hashes right but does not decode: {e}"
            )
            return None

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
                        client.want(
                            [Want(digest, bases=(blake3_digest(base),))],
                            {blake3_digest(base): base},
                        ),
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
                    await finish(stream)
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

    async def transfer(
        self, missing: dict[bytes, int], cut: Sequence[Sequence[bytes]] | None = None
    ) -> None:
        """Fetch the `missing` chunks into the store, from every peer at once, asked for
        in the runs of `cut` (`Schedule.cut`)."""
        failure = await download(
            self.net,
            self.local,
            missing,
            self.progress,
            request_timeout=self.settings.request_timeout,
            schedule=self._new_schedule,
            cut=cut,
            bases=self._bases,
            plain=self._plain,
            on_progress=self._report,
        )
        if failure is not None:
            raise FetchError(failure)

    async def _report(self) -> None:
        if self._on_progress is not None:
            r = self._on_progress(self.progress)
            if r is not None:
                await r


def _matches(m: Manifest, sp: StorePath, verdict: Trusted) -> bool:
    """Whether a manifest says what the builders' claim says of the path."""
    o = verdict.outcome
    return (
        m.store_path == sp
        and m.nar_hash == o.nar_hash
        and m.nar_size == o.nar_size
        and tuple(sorted(m.references, key=str)) == o.references
    )


class _BusyPeer:
    """`_blob_from`'s answer when the peer said BUSY."""


BUSY = _BusyPeer()
