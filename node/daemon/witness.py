"""The node as a witness of its builders' logs (trust.witness), and as a builder that
keeps its own (trust.claimlog).

- Claims this node signs (`ferry publish --key`, `publish_key`) are appended to the log of
  their key (`<data-dir>/claimlog/`) and go out as logged claims (trust.logged): on the
  gossip topic witnesswire.LOGGED_TOPIC, beside the plain claims.
- Logged claims that arrive (that topic, or pushed on `/ferry/logged/1` by a builder)
  are checked, their claims kept like any other, and shown to the witness; what a peer
  handed this node alone is passed on to the topic, so every node sees what every other
  was told.
- A lie the witness catches, or a proof a peer sends that holds, is written to
  `<data-dir>/caught/<key hex>`, published on witnesswire.CAUGHT_TOPIC, and the key counts for
  nothing in every fetch from then on (across restarts).
- A builder takes back a claim it signed by mistake with a revocation (trust.revocation),
  appended to its log and sent like a logged claim (`ferry trust revoke-claim`; and by
  itself when the node signs another result for a path its log already holds). Revocations
  by the keys the policy counts are kept in `<data-dir>/revoked/`, and the claims they
  name count for nothing (`QuorumPolicy.withdrawn`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
import trio
from libp2p.abc import INetConn, INetwork

from node.daemon import api
from node.daemon.logbook import Logbook
from node.daemon.nodestore import NodeStore
from p2p import frame, logwire, witnesswire
from p2p.host import Notifee
from p2p.stream import ByteStream, StreamGone, abort, finish, read_frame, read_some, write
from store import userfile
from trust import keyfile, revocation
from trust.claim import Claim, ClaimError, SignedClaim
from trust.claimlog import ClaimLog
from trust.equivocation import EquivocationError
from trust.key import PublicKey, SecretKey
from trust.logged import (
    MAX_LOGGED,
    Logged,
    LoggedClaim,
    LoggedError,
    LoggedRevocation,
    decode_entry,
)
from trust.merkle import Tree
from trust.revocation import Revocation, RevocationError, SignedRevocation, claim_digest
from trust.treehead import SignedTreeHead, TreeHeadError
from trust.witness import Caught, Log, Released, Witness

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]


class Witnessing:
    def __init__(self, data_dir: str, store: NodeStore) -> None:
        self.store = store
        self.witness = Witness()
        self.caught_dir = os.path.join(data_dir, "caught")
        self.revoked_dir = os.path.join(data_dir, "revoked")
        self.log_dir = os.path.join(data_dir, "claimlog")
        self.logs: dict[bytes, ClaimLog] = {}
        self.publish: Publish | None = None  # set once gossip runs
        self._joins, self._joined = trio.open_memory_channel[str](witnesswire.MAX_PROOFS_TOLD)
        self.heads_dir = os.path.join(data_dir, "heads")
        self.logbook = Logbook(data_dir)
        # Logs with heads to show consistent, asked of their builders one at a time.
        self._checks, self._to_check = trio.open_memory_channel[Log](witnesswire.MAX_CHECKS)
        self._queued: set[Log] = set()
        self._hints: dict[Log, list[str]] = {}  # peers that served or sent heads, latest first
        self._saved: dict[Log, int] = {}  # the size of the newest head kept on disk
        self._remembered: dict[str, bytes] = {}  # <key hex>.keyfile -> the path in it
        self._load_keys()
        self._load_heads()
        self._load_revocations()  # first: a revocation can excuse a proof
        self._load_caught()

    def _load_heads(self) -> None:
        for path, data in _kept_files(self.heads_dir):
            try:
                head = SignedTreeHead.decode(data)
            except TreeHeadError as e:
                log.warning("ignoring %s: not a tree head (%s)", path, e)
                continue
            if head.valid():
                self.witness.observe_head(head)
                self._saved[head.log] = head.head.size

    def _keep_newest(self, which: Log) -> None:
        """Keep the newest head of a log shown consistent: after a restart, a head of
        another branch is still asked about."""
        head = self.witness.newest(which)
        if head is None or self._saved.get(which) == head.head.size:
            return
        name = f"{which[0].hex()}-{which[1].hex()}"
        if _keep(self.heads_dir, name, head.encode(), "a tree head"):
            self._saved[which] = head.head.size

    def _load_revocations(self) -> None:
        for path, data in _kept_files(self.revoked_dir):
            try:
                logged = decode_entry(data)
            except LoggedError as e:
                log.warning("ignoring %s: not a logged revocation that holds (%s)", path, e)
                continue
            if isinstance(logged, LoggedRevocation):
                self.witness.observe(logged)

    def _load_caught(self) -> None:
        for path, data in _kept_files(self.caught_dir):
            try:
                self.witness.receive_proof(data)
            except EquivocationError as e:
                log.warning("ignoring %s: not a proof that holds (%s)", path, e)

    def keys_caught(self) -> frozenset[bytes]:
        return self.witness.keys_caught()

    def withdrawn(self) -> frozenset[tuple[bytes, bytes]]:
        return self.witness.withdrawn()

    def close(self) -> None:
        for claimlog in self.logs.values():
            claimlog.close()
        self.logbook.close()

    # --- as a builder

    def add_key(self, key: SecretKey, path: str | None = None) -> None:
        """A key this node signs claims with: their claims go into its log. `path`, its
        secret key file, is remembered (`<key hex>.keyfile` beside the log) so that the
        node serves the log again after a restart, before it signs with the key again."""
        if key.public.key not in self.logs:
            self.logs[key.public.key] = ClaimLog(self.log_dir, key)
        if path is not None:
            name = f"{key.public.key.hex()}.keyfile"
            where = os.path.abspath(path).encode()
            if self._remembered.get(name) != where and _keep(
                self.log_dir, name, where, "the path of a secret key file"
            ):
                self._remembered[name] = where

    def _load_keys(self) -> None:
        for path, data in _kept_files(self.log_dir, ".keyfile"):
            self._remembered[os.path.basename(path)] = data
            try:
                key = keyfile.load_secret(data.decode())
            except (UnicodeDecodeError, keyfile.KeyFileError) as e:
                log.warning("not serving a claim log whose key was in %s: %s", path, e)
                continue
            if f"{key.public.key.hex()}.keyfile" == os.path.basename(path):
                self.add_key(key)

    def log_claims(self, signed: Sequence[SignedClaim]) -> list[Logged]:
        """Append the claims this node's keys signed to their logs; each with a head over
        all of them. A claim that gives a path another result than the claim its log
        holds for it goes in after a revocation of that one: a rebuild that came out
        different is a correction made in the open, not a second story. (On the event
        loop: one fsync for the batch.)"""
        out: list[Logged] = []
        for key, claimlog in self.logs.items():
            mine = [c for c in signed if c.builder.key == key]
            if not mine:
                continue
            entries: list[SignedClaim | SignedRevocation] = []
            for c in mine:
                held = claimlog.standing(str(c.claim.store_path))
                if held is not None and held.outcome != c.claim.outcome:
                    log.warning(
                        "%s: signed another result than its earlier claim in %s's log "
                        "(a build that is not reproducible?): the earlier claim is revoked",
                        c.claim.store_path,
                        c.builder,
                    )
                    entries.append(revocation.revoke(held, claimlog.key))
                entries.append(c)
            out += self._append(claimlog, entries)
        return out

    def revoke_claims(self, key: SecretKey, claims: Sequence[Claim]) -> list[LoggedRevocation]:
        """Revoke claims `key` signed, in its log; kept, and counting for nothing here."""
        self.add_key(key)
        revoked = self._append(
            self.logs[key.public.key], [revocation.revoke(c, key) for c in claims]
        )
        return [x for x in revoked if isinstance(x, LoggedRevocation)]

    def _append(
        self, claimlog: ClaimLog, entries: Sequence[SignedClaim | SignedRevocation]
    ) -> list[Logged]:
        def leaf(e: SignedClaim | SignedRevocation) -> bytes:
            return e.claim.encode() if isinstance(e, SignedClaim) else e.revocation.encode()

        claimlog.append_many([leaf(e) for e in entries])
        head = claimlog.head()
        out: list[Logged] = []
        for e in entries:
            proved = claimlog.prove(leaf(e), head)
            if isinstance(e, SignedClaim):
                out.append(LoggedClaim(e, head, proved.index, proved.proof))
            else:
                out.append(LoggedRevocation(e, head, proved.index, proved.proof))
        for logged in out:
            self.witness.observe(logged)  # our own word, so that a peer's other one shows
            if isinstance(logged, LoggedRevocation):
                self._keep_revocation(logged)
        self.witness.own(head)
        self.logbook.add(x for x in out if isinstance(x, LoggedClaim))
        return out

    def _keep_revocation(self, logged: LoggedRevocation) -> None:
        r = logged.revocation.revocation
        _keep(
            self.revoked_dir,
            f"{r.builder.key.hex()}-{r.claim.hex()}",
            logged.encode(),
            "a revocation",
        )

    async def announce(self, logged: Sequence[Logged]) -> None:
        if logged and self.publish is not None:
            try:
                await self.publish(
                    witnesswire.LOGGED_TOPIC, msgpack.packb([x.encode() for x in logged])
                )
            except Exception as e:  # noqa: BLE001 - best effort, as for plain claims
                log.info("gossip of logged claims failed: %s", e)

    # --- as a witness

    async def receive_logged(self, raw: list[bytes], source: str, *, pass_on: bool) -> None:
        """Logged claims and revocations from a peer (`source`); `pass_on` publishes
        those that were news to this node."""
        good: list[Logged] = []
        for data in raw:
            try:
                good.append(await trio.to_thread.run_sync(decode_entry, data))
            except LoggedError as e:
                log.info("a logged entry from %s does not hold: %s", source, e)
        if not good:
            return
        news: list[Logged] = []
        for logged in good:
            # What it keeps of a log is kept for the keys its policy counts (and its own):
            # a stranger's key could make it hold any number of leaves.
            if not (logged.signer.encode() in self.store.trusted or logged.signer.key in self.logs):
                news.append(logged)
                continue
            new = not self.witness.seen(logged)
            if new:
                news.append(logged)
            event = self.witness.observe(logged)
            if isinstance(event, Caught):
                await self._caught(event, source)
            elif isinstance(event, Released):
                self._released(event)
            if logged.signer.key not in self.logs:
                self._check_soon(logged.head.log, source)
            if isinstance(logged, LoggedRevocation) and new:
                r = logged.revocation.revocation
                log.warning(
                    "builder key %s revoked its claim for %s (signed %s): it counts for "
                    "nothing from now on",
                    r.builder,
                    r.store_path,
                    r.time,
                )
                self._keep_revocation(logged)
        claims = [x for x in good if isinstance(x, LoggedClaim) and x.claim.nix_valid()]
        self.logbook.add(x for x in claims if x.signer.encode() in self.store.trusted)
        await self.store.learn([x.claim for x in claims], source)
        if pass_on:
            await self.announce(news)

    def _check_soon(self, which: Log, source: str) -> None:
        hints = self._hints.setdefault(which, [])
        if source not in hints:
            hints[:] = [*hints, source][-witnesswire.MAX_ASKED :]
        self._keep_newest(which)
        if which in self._queued or self.witness.to_prove(which) is None:
            return
        try:
            self._checks.send_nowait(which)
            self._queued.add(which)
        except trio.WouldBlock:
            pass  # asked when its next head arrives

    def _released(self, released: Released) -> None:
        log.warning(
            "released builder key %s: it revoked the earlier of its two claims before it "
            "signed the other (a correction, not two stories)",
            released.key,
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.caught_dir, released.key.key.hex()))

    async def receive_proof(self, data: bytes, source: str) -> None:
        try:
            caught = self.witness.receive_proof(data)
        except EquivocationError as e:
            log.info("a proof from %s does not hold: %s", source, e)
            return
        if caught is not None:
            await self._caught(caught, source)

    async def _caught(self, caught: Caught, source: str) -> None:
        log.warning(
            "caught builder key %s telling two stories (%s, from %s): its claims count for "
            "nothing from now on",
            caught.key,
            caught.kind,
            source,
        )
        _keep(self.caught_dir, caught.key.key.hex(), caught.encoded, "a proof of equivocation")
        if self.publish is not None:
            try:
                await self.publish(witnesswire.CAUGHT_TOPIC, caught.encoded)
            except Exception as e:  # noqa: BLE001 - a peer that asks will still be told
                log.info("gossip of a proof failed: %s", e)

    async def serve_push(self, stream: ByteStream, peer: str) -> None:
        """Logged claims a peer pushes (a builder handing out what it signed)."""
        got = await _frames(stream, MAX_LOGGED, witnesswire.MAX_PUSHED, f"a push from {peer}")
        await self.receive_logged(got, peer, pass_on=True)

    # --- proofs to peers that join (gossip reaches only those connected when it went out)

    def joined(self, peer: str) -> None:
        if self.witness.caught or self.witness.revocations:
            with contextlib.suppress(trio.WouldBlock):  # a crowd joining: the rest next time
                self._joins.send_nowait(peer)

    async def run(
        self,
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
        peers: Callable[[], list[str]],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checking, open_stream, peers)
            async for peer in self._joined:
                nursery.start_soon(self._tell, open_stream, peer)

    # --- consistency between the heads of a log, asked of its builder

    async def _checking(
        self,
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
        peers: Callable[[], list[str]],
    ) -> None:
        # A few logs at once: a builder that never answers must not hold up the others.
        limit = trio.CapacityLimiter(witnesswire.CHECKS_AT_ONCE)
        async with trio.open_nursery() as nursery:
            async for which in self._to_check:
                nursery.start_soon(self._check_log, which, limit, open_stream, peers)

    async def _check_log(
        self,
        which: Log,
        limit: trio.CapacityLimiter,
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
        peers: Callable[[], list[str]],
    ) -> None:
        try:
            async with limit:
                # Heads that arrive meanwhile are taken by this loop (the log stays queued).
                for _ in range(witnesswire.MAX_ASKED):
                    pair = self.witness.to_prove(which)
                    if pair is None or not await self._prove(which, *pair, open_stream, peers):
                        break
        finally:
            self._queued.discard(which)

    async def _prove(
        self,
        which: Log,
        old: int,
        new: int,
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
        peers: Callable[[], list[str]],
    ) -> bool:
        """Ask the peers that sent the log's heads, then the others, until one (its
        builder) shows the heads of `old` and `new` leaves consistent; whether one did."""
        key = self.witness.heads_of(which)[0].builder
        asked = list(dict.fromkeys([*self._hints.get(which, [])[::-1], *peers()]))
        for peer in asked[: witnesswire.MAX_ASKED]:
            try:
                with trio.fail_after(witnesswire.ASK_DEADLINE):
                    answer = await self._ask(
                        open_stream, peer, logwire.Consistent(which[0], which[1], old, new)
                    )
                if not isinstance(answer, logwire.Proved):
                    continue
                a, b = SignedTreeHead.decode(answer.old), SignedTreeHead.decode(answer.new)
                caught = self.witness.settle(which, old, new, a, b, answer.proof)
            except (trio.TooSlowError, TreeHeadError, ValueError, StreamGone) as e:
                log.info("%s did not show %s's heads consistent: %s", peer, key, e)
                continue
            except Exception as e:  # noqa: BLE001 - gone, or not a ferry node
                log.debug("asking %s for a consistency proof: %s", peer, e)
                continue
            if caught is not None:
                await self._caught(caught, peer)
                return False
            log.info(
                "heads of %s's log: its first %d leaves are a prefix of its %d (shown by %s)",
                key,
                old,
                new,
                peer,
            )
            self._hints[which] = [*(p for p in self._hints.get(which, []) if p != peer), peer]
            self._keep_newest(which)
            return True
        log.info(
            "no peer showed %s's heads of %d and %d leaves consistent: asked again when "
            "another head arrives",
            key,
            old,
            new,
        )
        return False

    async def prove_claims(
        self,
        claims: Sequence[SignedClaim],
        peers: Sequence[str],
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
    ) -> int:
        """Ask `peers` (those that hold the claims: their builder, or nodes that kept their
        logged forms) where in their builders' logs the claims are, all at once within
        witnesswire.ASK_DEADLINE; the evidence goes into the logbook. How many of the
        claims got some."""
        wanted = list(dict.fromkeys(claim_digest(c.claim) for c in claims))[: logwire.MAX_INCLUDED]
        answers: dict[str, tuple[bytes, ...]] = {}

        async def ask(peer: str) -> None:
            try:
                answer = await self._ask(open_stream, peer, logwire.Included(tuple(wanted)))
            except Exception as e:  # noqa: BLE001 - gone, or an older node: another may know
                log.debug("asking %s where claims are logged: %s", peer, e)
                return
            if isinstance(answer, logwire.Logged):
                answers[peer] = answer.entries

        with trio.move_on_after(witnesswire.ASK_DEADLINE):
            async with trio.open_nursery() as nursery:
                for peer in list(dict.fromkeys(peers))[: witnesswire.MAX_ASKED]:
                    nursery.start_soon(ask, peer)
        before = sum(d in self.logbook.logs for d in wanted)
        for peer, entries in answers.items():
            await self.receive_logged(list(entries), peer, pass_on=False)
        shown = sum(d in self.logbook.logs for d in wanted) - before
        log.info(
            "asked %d peers where %d claims are logged: %d shown", len(answers), len(wanted), shown
        )
        return shown

    @staticmethod
    async def _ask(
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
        peer: str,
        request: logwire.Message,
    ) -> logwire.Message:
        stream = await open_stream(peer, logwire.PROTOCOL)
        try:
            await write(stream, logwire.encode(request))
            return logwire.decode(await read_frame(stream, logwire.CAP))
        finally:
            await finish(stream)

    async def _tell(
        self, open_stream: Callable[[str, str], Awaitable[ByteStream]], peer: str
    ) -> None:
        proofs = [c.encoded for c in self.witness.caught.values()][: witnesswire.MAX_PROOFS_TOLD]
        # The newest revocations: a peer that missed their gossip must not count those claims.
        revoked = [r.encode() for r in self.witness.revocations.values()][-witnesswire.MAX_PUSHED :]
        for protocol, items, cap in (
            (witnesswire.PROOFS_PROTOCOL, proofs, witnesswire.MAX_PROOF),
            (witnesswire.PUSH_PROTOCOL, revoked, MAX_LOGGED),
        ):
            if not items:
                continue
            with trio.move_on_after(witnesswire.DEADLINE):
                try:
                    stream = await open_stream(peer, protocol)
                    await write(stream, b"".join(frame.encode(p, cap) for p in items))
                    await finish(stream)
                except Exception as e:  # noqa: BLE001 - an older peer, or gone
                    log.debug("telling %s on %s: %s", peer, protocol, e)

    async def serve_proofs(self, stream: ByteStream, peer: str) -> None:
        got = await _frames(
            stream, witnesswire.MAX_PROOF, witnesswire.MAX_PROOFS_TOLD, f"proofs from {peer}"
        )
        for data in got:
            await self.receive_proof(data, peer)

    # --- the logs of this node's keys, read by anyone (/ferry/log/1), and audits

    async def serve_log(self, stream: ByteStream, peer: str) -> None:
        try:
            with trio.fail_after(witnesswire.DEADLINE):
                request = logwire.decode(await read_frame(stream, logwire.CAP))
                answer = (
                    await self._included(request)
                    if isinstance(request, logwire.Included)
                    else self._answer(request)
                )
                await write(stream, logwire.encode(answer))
                await finish(stream)
        except (trio.TooSlowError, logwire.LogWireError, frame.FrameError, StreamGone) as e:
            log.info("a log request from %s went unanswered: %s", peer, e)
            await abort(stream)

    async def _included(self, request: logwire.Included) -> logwire.Logged:
        """The logged forms kept of the claims asked about; for a claim in one of this
        node's own logs that has none kept (signed before the node kept a logbook), one
        made now from the log and the signed claim in the store."""
        found: list[bytes] = []
        size = 0
        for digest in request.claims:
            for x in self.logbook.logged(digest) or await self._log_own(digest):
                if found and size + len(x) > logwire.MAX_BYTES:
                    return logwire.Logged(tuple(found))
                found.append(x)
                size += len(x)
        return logwire.Logged(tuple(found))

    async def _log_own(self, digest: bytes) -> list[bytes]:
        for claimlog in self.logs.values():
            index = claimlog.index_of_digest(digest)
            if index is None:
                continue
            try:
                claim = Claim.decode(claimlog.leaf(index))
            except ClaimError:
                return []  # a revocation, or not this node's to judge here
            signed = [
                c
                for c in await self.store.claims_for(claim.store_path.hash_part)
                if c.claim == claim
            ]
            if not signed:
                return []  # the store no longer keeps it (`ferry gc`)
            head = claimlog.head()
            proved = claimlog.prove(claimlog.leaf(index), head)
            logged = LoggedClaim(signed[0], head, proved.index, proved.proof)
            self.logbook.add([logged])
            return [logged.encode()]
        return []

    def _answer(self, request: logwire.Message) -> logwire.Message:
        if not isinstance(request, logwire.Head | logwire.Entries | logwire.Consistent):
            return logwire.Nothing("not a request")
        claimlog = self.logs.get(request.key)
        if claimlog is None:
            return logwire.Nothing("this node keeps no log of that key")
        if isinstance(request, logwire.Head):
            return logwire.Signed(claimlog.head().encode())
        if isinstance(request, logwire.Consistent):
            if request.log != claimlog.log_id:
                return logwire.Nothing("this node keeps another log of that key")
            if request.new > len(claimlog):
                return logwire.Nothing(f"the log has {len(claimlog)} leaves")
            return logwire.Proved(
                claimlog.head(size=request.old).encode(),
                claimlog.head(size=request.new).encode(),
                tuple(claimlog.consistency(request.old, request.new)),
            )
        leaves: list[bytes] = []
        size = 0
        for index in range(request.start, min(len(claimlog), request.start + request.count)):
            leaf = claimlog.leaf(index)
            if leaves and size + len(leaf) > logwire.MAX_BYTES:
                break
            leaves.append(leaf)
            size += len(leaf)
        return logwire.Leaves(tuple(leaves))

    async def audit(
        self,
        key: PublicKey,
        peers: list[str],
        open_stream: Callable[[str, str], Awaitable[ByteStream]],
    ) -> api.Audit:
        """Read `key`'s log from the first peer that serves it, whole, and check it: its
        root against its head, every leaf a claim by the key, one outcome per path, and
        every head of the key this node has seen against the log's prefix of its size."""

        async def ask(peer: str, request: logwire.Message) -> logwire.Message:
            return await self._ask(open_stream, peer, request)

        for peer in peers:
            try:
                with trio.fail_after(witnesswire.DEADLINE):
                    answer = await ask(peer, logwire.Head(key.key))
                if not isinstance(answer, logwire.Signed):
                    continue
                head = SignedTreeHead.decode(answer.head)
                if head.builder.key != key.key or not head.valid():
                    log.info("%s served a head that is not %s's", peer, key)
                    continue
                tree, leaves = Tree(), []
                while len(tree) < head.head.size:
                    with trio.fail_after(witnesswire.DEADLINE):
                        got = await ask(
                            peer, logwire.Entries(key.key, len(tree), logwire.MAX_COUNT)
                        )
                    if not isinstance(got, logwire.Leaves) or not got.leaves:
                        raise logwire.LogWireError(f"it stopped at leaf {len(tree)}")
                    for leaf in got.leaves[: head.head.size - len(tree)]:
                        tree.append(leaf)
                        leaves.append(leaf)
            except Exception as e:  # noqa: BLE001 - gone, too slow, or junk: the next peer
                log.info("reading %s's log from %s failed: %s", key, peer, e)
                continue
            problems, paths = _check_leaves(key, leaves)
            if tree.root() != head.head.root:
                problems.insert(0, "the log's leaves do not hash to the root its head signs")
            seen = self.witness.heads_of(head.log)
            for old in seen:
                size = old.head.size
                if size > len(tree):
                    problems.append(
                        f"a head of size {size:,} was seen here, and the log has only "
                        f"{len(tree):,} leaves: it was cut back"
                    )
                elif tree.root(size) != old.head.root:
                    problems.append(
                        f"a head of size {size:,} (signed at {old.head.time}) has root "
                        f"{old.head.root.hex()[:16]}…, but the log's first {size:,} leaves hash "
                        f"to {tree.root(size).hex()[:16]}…: the log was rewritten"
                    )
            caught = self.witness.caught.get(key.key)
            if caught is not None:
                problems.append(
                    f"this node holds a proof that the key told two stories ({caught.kind}; "
                    "`ferry trust caught`)"
                )
            return api.Audit(
                str(key),
                True,
                peer,
                head.head.size,
                head.head.root.hex(),
                head.head.time,
                tuple(problems),
                len(seen),
                paths,
                head.head.log.hex(),
            )
        return api.Audit(str(key), False)

    def report(self) -> tuple[api.CaughtKey, ...]:
        return tuple(
            api.CaughtKey(str(c.key), c.kind, c.key.key.hex()) for c in self.witness.caught.values()
        )


class Joins(Notifee):
    """Tells `on_join` of every new connection, whoever dialed it."""

    def __init__(self, on_join: Callable[[str], None]) -> None:
        self.on_join = on_join

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self.on_join(str(conn.muxed_conn.peer_id))


async def _frames(stream: ByteStream, cap: int, most: int, what: str) -> list[bytes]:
    """The frames (p2p.frame, each at most `cap`) a peer writes on a push stream, at most
    `most`, within witnesswire.DEADLINE; those that came whole before a fault."""
    decoder = frame.FrameDecoder(cap)
    got: list[bytes] = []
    try:
        with trio.fail_after(witnesswire.DEADLINE):
            while len(got) < most:
                data = await read_some(stream)
                if not data:
                    break
                got += decoder.feed(data)
    except (trio.TooSlowError, frame.FrameError, StreamGone) as e:
        log.info("%s ended: %s", what, e)
        await abort(stream)
    return got[:most]


def _kept_files(directory: str, suffix: str = "") -> list[tuple[str, bytes]]:
    """The files this node kept in `directory` whose names end in `suffix` (path and
    bytes), in name order; one that cannot be read is logged and left out."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(suffix))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                out.append((path, f.read()))
        except OSError as e:
            log.warning("ignoring %s: %s", path, e.strerror)
    return out


def _keep(directory: str, name: str, data: bytes, what: str) -> bool:
    """Write `directory/name` whole or not at all; False (logged) if it cannot be, as
    what it holds still counts in memory and travels."""
    path = os.path.join(directory, name)
    try:
        os.makedirs(directory, exist_ok=True)
        userfile.write_atomically(path, data, what)
    except Exception as e:  # noqa: BLE001 - a full or read-only disk must not stop the node
        log.warning("cannot keep %s in %s: %s", what, path, e)
        return False
    return True


def _check_leaves(key: PublicKey, leaves: list[bytes]) -> tuple[list[str], int]:
    """Problems with a log's leaves: neither claims nor revocations, entries by another
    key, a path given another result while its earlier claim still stood; and how many
    paths they name."""
    problems: list[str] = []
    standing: dict[str, Claim | None] = {}  # path -> the claim not revoked, if any
    for index, leaf in enumerate(leaves):
        try:
            entry: Claim | Revocation = Claim.decode(leaf)
        except ClaimError as e:
            try:
                entry = Revocation.decode(leaf)
            except RevocationError:
                problems.append(f"leaf {index} is neither a claim nor a revocation: {e}")
                continue
        if entry.builder.key != key.key:
            problems.append(f"leaf {index} is by another key ({entry.builder})")
            continue
        path = str(entry.store_path)
        held = standing.get(path)
        if isinstance(entry, Revocation):
            if held is not None and entry.revokes(held):
                standing[path] = None
            continue
        if held is not None and held.outcome != entry.outcome:
            problems.append(
                f"leaf {index} gives {path} another result than an earlier leaf it did not revoke"
            )
        standing[path] = entry
    return problems, len(standing)
