"""A running ferry node: builds its parts and runs them in one trio nursery that owns
them all. The parts: the store as they share it (nodestore), finding peers and being
found (discovery), fetch sessions (session), the block and claim servers
(node.exchange.server), lazy mounts (mounts), the Nix gateway (gateway), and the control
socket (control), whose requests are answered here."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgpack
import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.daemon import api, autopublish, control, gateway, witness
from node.daemon.autopublish import AutoPublish
from node.daemon.collector import Collector
from node.daemon.config import ConfigError, NodeConfig
from node.daemon.control import ControlError, Failure
from node.daemon.discovery import Discovery
from node.daemon.mounts import Mounts
from node.daemon.nodestore import NodeStore
from node.daemon.outbox import OutboxError
from node.daemon.prepack import Prepacker
from node.daemon.reachability import Reachability
from node.daemon.relay import Relays, RelayService
from node.daemon.session import FetchSessions
from node.daemon.storeops import StoreOps
from node.daemon.witness import Witnessing
from node.exchange.fetch import FetchError, FetchRefused, NoPolicy
from node.exchange.peers import PeerBook
from node.exchange.progress import Progress
from node.exchange.server import Served, serve_blocks, serve_claims
from node.exchange.uplink import Uplink
from node.gateway import key as gateway_key
from node.gateway.metrics import Metrics
from node.local.errors import StoreError
from node.local.packs import PackStore
from node.local.publish import Bulk
from node.local.store import LocalStore
from p2p import blocks, claimwire, logwire, reachability, relay, summary, witnesswire
from p2p.host import HostLimits, make_host
from p2p.identity import load_or_create
from p2p.stream import abort
from store import userfile
from store.export import ExportError
from store.nixcli import NixError
from store.path import StorePath, StorePathError
from store.restore import RestoreError
from store.source import SourceError
from trust import keyfile, policyfile
from trust.claim import SignedClaim
from trust.key import KeyFormatError, PublicKey, SecretKey
from trust.policy import PolicyError, QuorumPolicy
from trust.revocation import claim_digest

log = logging.getLogger(__name__)

ADDR_FILE = "node.addr"


LOOPBACK_RATE = 1e9  # bytes per second a peer on loopback is taken to take, until measured

# Settings a reload puts into effect at once; a change to any other needs a restart.
LIVE_SETTINGS = ("policy", "max_store_size", "publish_key")


def _every_fifth_second(progress: control.OnProgress) -> Callable[[Progress], Awaitable[None]]:
    """A fetch session's progress, sent on to the client at most every 0.2 s (and when
    the last chunk is in)."""
    last = [0.0]

    async def report(p: Progress) -> None:
        now = trio.current_time()
        if now - last[0] >= 0.2 or p.chunks_done == p.chunks:
            last[0] = now
            await progress(fetch_progress(p))

    return report


class Node:
    def __init__(
        self,
        data_dir: str,
        config: NodeConfig,
        store: LocalStore,
        reread: Callable[[], NodeConfig] | None = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.config = config
        self._reread = reread  # the settings as the files and flags now say (reload)
        self.policy: QuorumPolicy | None = policyfile.load(config.policy) if config.policy else None
        self.book = PeerBook(ban_seconds=config.ban_seconds, strikes=config.limits.strikes)
        self.served = Served()
        self.metrics = Metrics()
        self.uplink = Uplink(
            config.upload_slots,
            config.limits.replies_per_peer,
            config.limits.reply_bytes,
            config.limits.slow_replies,
        )
        self.store = NodeStore(store, config.diff_level)
        if config.pack_ahead:
            self.store.packer.packs = PackStore(
                os.path.join(self.data_dir, "packs"), config.pack_ahead
            )
        self.prepacker = Prepacker(self.store)
        self.store.on_published = self.prepacker.submit
        self.store.others_per_path = config.limits.unknown_claims_per_path
        self._trust(self.policy)
        self.keys = load_or_create(self.data_dir)
        self.host: IHost = make_host(
            self.keys,
            HostLimits(max_connections=config.max_connections),
            mdns=config.mdns,
            listen=[multiaddr.Multiaddr(a) for a in config.listen],
            on_overrun=self._overrun,
        )
        self.peer_id = self.host.get_id()
        self.discovery = Discovery(self.host, config, self.book, self.store)
        self.sessions = FetchSessions(
            self.discovery,
            self.store,
            self.policy,
            config,
            self.book,
            self.metrics,
            self.discovery.bootstrapped,
        )
        self.mounts = Mounts(self.data_dir, config, self.store, self.sessions)
        own_addrs = self.host.get_addrs  # before relayed addresses are added to them
        self.reachability = Reachability(self.discovery, own_addrs)
        self.relay_service = RelayService(
            self.host, config, lambda: self.reachability.status == "public"
        )
        self.relays = Relays(
            self.host,
            config,
            lambda: self.reachability.status == "private",
            lambda: self.reachability.changed,
            self.discovery.connect,
            self.host.get_transport_addrs,
        )
        self.discovery.relays = self.relays
        me = multiaddr.Multiaddr(f"/p2p/{self.peer_id}")

        def advertised() -> list[multiaddr.Multiaddr]:
            # Identify and DHT provider records carry these: peers that cannot dial this
            # node learn the relays that reach it. (py-libp2p's addrs_factory would cut a
            # relayed address at its first /p2p/.)
            return [*own_addrs(), *(a.encapsulate(me) for a in self.relays.addrs())]

        self.host.get_addrs = advertised  # type: ignore[method-assign]
        self.witnessing = Witnessing(self.data_dir, self.store)
        self.sessions.caught = self.witnessing.keys_caught
        self.sessions.withdrawn = self.witnessing.withdrawn
        self.sessions.logs = self.witnessing.logbook.logs
        self.sessions.prove = self._prove_claims
        self.host.get_network().register_notifee(witness.Joins(self.witnessing.joined))
        self.autopublish = AutoPublish(self.data_dir, config, self.store, self._announce)
        if self.autopublish.key is not None:
            self.witnessing.add_key(self.autopublish.key)
        self.collector = Collector(self.store, config.max_store_size)
        self.store_ops = StoreOps(self.store, self.collector)
        self.gateway_key: SecretKey | None = (
            gateway_key.load_or_create(self.data_dir, config.gateway_key)
            if config.gateway != "off"
            else None
        )
        self.gateway_url: str | None = None
        self.started = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = await control.bind(self.data_dir)
        try:
            # No other node runs on this data directory (bind checked): "ready" files here
            # were left by one that was killed, and must not announce this one early.
            _remove_files(self.data_dir, (ADDR_FILE, gateway.GATEWAY_FILE))
            check_listen(self.config.listen)
            async with (
                self.host.run([multiaddr.Multiaddr(a) for a in self.config.listen]),
                AsyncExitStack() as stack,
            ):
                try:
                    self.host.set_stream_handler(TProtocol(blocks.PROTOCOL), self._on_blocks)
                    self.host.set_stream_handler(TProtocol(claimwire.PROTOCOL), self._on_claims)
                    self.host.set_stream_handler(
                        TProtocol(claimwire.PROTOCOL_GETS), self._on_claims
                    )
                    self.host.set_stream_handler(TProtocol(summary.PROTOCOL), self._on_summary)
                    self.host.set_stream_handler(
                        TProtocol(reachability.PROTOCOL), self._on_reachability
                    )
                    for protocol, serve, what in (
                        (witnesswire.PUSH_PROTOCOL, self.witnessing.serve_push, "a push"),
                        (witnesswire.PROOFS_PROTOCOL, self.witnessing.serve_proofs, "proofs"),
                        (logwire.PROTOCOL, self.witnessing.serve_log, "serving a claim log"),
                        (relay.HOP, self.relay_service.serve, "relaying"),
                        (relay.STOP, self.relays.accept, "a circuit through a relay"),
                    ):
                        self.host.set_stream_handler(
                            TProtocol(protocol), self._serving(serve, what)
                        )
                    await self.discovery.start(stack)
                    addrs = [str(a) for a in self.host.get_addrs()]
                    for a in addrs:
                        log.info("listening on %s", a)
                    async with trio.open_nursery() as nursery:
                        if self.gateway_key is not None:
                            self.gateway_url = await nursery.start(self._serve_gateway)
                        await nursery.start(self.mounts.run)
                        await nursery.start(self.autopublish.run)
                        await nursery.start(self.collector.run)
                        await nursery.start(self.prepacker.run)
                        await nursery.start(control.serve, listener, self._control)
                        self.discovery.run(nursery)
                        await nursery.start(self.reachability.run)
                        await nursery.start(self.relays.run)
                        await nursery.start(
                            self.witnessing.run, self.discovery.open_stream, self.discovery.peers
                        )
                        if self.discovery.pubsub is not None:
                            await nursery.start(self._witness_gossip, self.discovery.pubsub)
                        # node.addr tells scripts and other nodes that the node is up: written
                        # only once peers, the control socket and the gateway all accept.
                        userfile.write_atomically(
                            os.path.join(self.data_dir, ADDR_FILE),
                            "".join(a + "\n" for a in addrs).encode(),
                            "the node address file",
                        )
                        self.started.set()
                        task_status.started(addrs)
                finally:
                    with trio.CancelScope(shield=True):
                        await self.host.close()  # inside host.run(): otherwise sockets leak
        finally:
            listener.socket.close()
            _remove_files(self.data_dir, (control.SOCKET, ADDR_FILE, gateway.GATEWAY_FILE))
            self.autopublish.close()
            self.witnessing.close()
            self.store.close()

    async def _serve_gateway(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert self.gateway_key is not None
        backend = gateway.GatewayBackend(
            self.sessions,
            self.store,
            self.config,
            self.gateway_key,
            self._announce,
            self.discovery.upkeep.hold,
            self.metrics,
        )
        await gateway.serve(
            backend, self.config, self.metrics, self.data_dir, task_status=task_status
        )

    # --- serving peers

    def _overrun(self, peer: str, excess: int) -> None:
        # py-libp2p closes the connection itself (see p2p.host.guard_windows).
        self.book.punish(peer, f"sent {excess:,} bytes past a stream's window", trio.current_time())

    @asynccontextmanager
    async def _inbound(self, stream: INetStream) -> AsyncIterator[str | None]:
        """The peer to serve on this stream, or None (the stream is reset): a banned peer,
        or one past its stream limit, is not served."""
        peer = str(stream.muxed_conn.peer_id)
        limits = self.config.limits
        record = self.book.get(peer)
        if self.book.banned(peer, trio.current_time()):
            await abort(stream)
            await self.discovery.punish(peer, None)
            yield None
            return
        if record.streams >= limits.streams_per_peer or self.book.streams >= limits.streams_total:
            await abort(stream)
            if record.streams >= limits.streams_per_peer:
                await self.discovery.strike(
                    peer, f"opened more than {limits.streams_per_peer} streams at once"
                )
            yield None
            return
        record.streams += 1
        self.book.streams += 1
        try:
            with trio.CancelScope() as scope:  # cancelled if the peer is banned meanwhile
                record.serving.add(scope)
                yield peer
        finally:
            record.serving.discard(scope)
            record.streams -= 1
            self.book.streams -= 1

    async def _on_blocks(self, stream: INetStream) -> None:
        async with self._inbound(stream) as peer:
            if peer is None:
                return
            record = self.book.get(peer)

            def sent(blocks: int, size: int) -> None:
                self.served.add(blocks, size)
                record.sent_bytes += size

            try:
                await serve_blocks(
                    stream,
                    peer,
                    self.store,
                    self.discovery.punish,
                    sent,
                    self.uplink,
                    limits=self.config.limits,
                    on_strike=self.discovery.strike,
                    link_rate=LOOPBACK_RATE if _on_loopback(stream) else None,
                )
            except Exception:
                # A bug met while serving one peer must not stop the node serving the rest.
                log.exception("serving blocks to %s failed", peer)
                await abort(stream)

    async def _on_claims(self, stream: INetStream) -> None:
        async with self._inbound(stream) as peer:
            if peer is None:
                return
            try:
                await serve_claims(
                    stream,
                    peer,
                    self.store,
                    self.discovery.punish,
                    limits=self.config.limits,
                    on_strike=self.discovery.strike,
                )
            except Exception:
                log.exception("serving claims to %s failed", peer)
                await abort(stream)

    async def _on_reachability(self, stream: INetStream) -> None:
        async with self._inbound(stream) as peer:
            if peer is not None:
                try:
                    remote = stream.get_remote_address()
                except Exception:  # noqa: BLE001 - a relayed or closed connection has none
                    remote = None
                await self.reachability.serve(stream, remote[0] if remote else None)

    def _serving(
        self, serve: Callable[[INetStream, str], Awaitable[None]], what: str
    ) -> Callable[[INetStream], Awaitable[None]]:
        """A stream handler: `serve(stream, peer)` for a peer the inbound limits let in,
        with a bug met on one stream logged and the stream reset, not the node stopped.
        (A relay's stream stays counted while it carries a circuit: a peer's circuits
        count against its streams too.)"""

        async def handle(stream: INetStream) -> None:
            async with self._inbound(stream) as peer:
                if peer is not None:
                    try:
                        await serve(stream, peer)
                    except Exception:
                        log.exception("%s with %s failed", what, peer)
                        await abort(stream)

        return handle

    async def _witness_gossip(
        self, pubsub: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Logged claims and proofs of equivocation on their gossip topics."""
        me = self.host.get_id().to_bytes()
        logged = await pubsub.subscribe(witnesswire.LOGGED_TOPIC)
        caught = await pubsub.subscribe(witnesswire.CAUGHT_TOPIC)
        self.witnessing.publish = pubsub.publish
        task_status.started()

        async def follow(sub: Any, on: Callable[[bytes, str], Awaitable[None]]) -> None:
            while True:
                msg = await sub.get()
                if msg.from_id != me:
                    try:
                        # Who published it: a builder's heads are asked about there first.
                        await on(msg.data, str(ID(msg.from_id)))
                    except Exception:
                        # A bug met on one message must not stop the node hearing the rest.
                        log.exception("a gossiped log message could not be handled")

        async def on_logged(data: bytes, source: str) -> None:
            try:
                raw = msgpack.unpackb(data, max_array_len=claimwire.MAX_CLAIMS, max_map_len=0)
            except Exception:  # noqa: BLE001 - gossip is a hint: junk is dropped
                return
            if isinstance(raw, list):
                items = [r for r in raw if isinstance(r, bytes)]
                await self.witnessing.receive_logged(items, source, pass_on=False)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, logged, on_logged)
            nursery.start_soon(follow, caught, self.witnessing.receive_proof)

    async def _announce(self, signed: Sequence[SignedClaim], complete: Sequence[StorePath]) -> None:
        """Tell peers of new claims and paths; claims this node's keys signed go out with
        their place in the key's log too."""
        await self.discovery.announce(signed, complete)
        await self.witnessing.announce(self.witnessing.log_claims(signed))

    async def _on_summary(self, stream: INetStream) -> None:
        async with self._inbound(stream) as peer:
            if peer is not None:
                await self.store.summaries.serve(stream)

    def _trust(self, policy: QuorumPolicy | None) -> None:
        self.store.trusted = (
            frozenset() if policy is None else frozenset(k.encode() for k in policy.trusted)
        )

    # --- control requests

    async def _control(self, req: api.Request, progress: control.OnProgress) -> api.Reply:
        """The answer to one request; the domain's errors become the failures the CLI
        turns into exit codes."""
        try:
            return await self._answer(req, progress)
        except FetchRefused as e:
            raise ControlError(str(e), Failure.REFUSED) from None
        except (
            FetchError,
            StoreError,
            SourceError,
            NoPolicy,
            NixError,
            OutboxError,
            ExportError,
            RestoreError,
        ) as e:
            raise ControlError(str(e)) from None
        except OSError as e:
            # Writing where the command asked (materialize's DIR): the user's to fix.
            raise ControlError(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
        except StorePathError as e:
            raise ControlError(str(e), Failure.USAGE) from None

    async def _answer(self, req: api.Request, progress: control.OnProgress) -> api.Reply:
        match req:
            case api.StatusRequest():
                return await self._status()
            case api.PeersRequest():
                return self.discovery.report()
            case api.AuditRequest():
                try:
                    key = PublicKey.decode(req.key)
                except KeyFormatError as e:
                    raise ControlError(f"BUILDER-KEY: {e}", Failure.USAGE) from None
                return await self.witnessing.audit(
                    key, self.discovery.peers(), self.discovery.open_stream
                )
            case api.RevokeClaimRequest():
                return await self._revoke_claim(req)
            case api.FetchRequest():
                return await self._fetch(req, progress)
            case api.PublishRequest():
                return await self._publish(req)
            case api.PublishStoreRequest():
                return await self._publish_store(req, progress)
            case api.StoreStatsRequest():
                return await self.store_ops.stats()
            case api.StoreListRequest():
                return await self.store_ops.listing()
            case api.RootsRequest():
                return await self.store_ops.roots(req)
            case api.GcRequest():
                return await self.store_ops.gc(req.dry_run)
            case api.VerifyRequest():
                return await self.store_ops.verify(req.repair, progress)
            case api.ExportRequest():
                return await self.store_ops.export(req.store_path, progress)
            case api.ImageRequest():
                return await self.store_ops.image(req.store_path)
            case api.MaterializeRequest():
                return await self.store_ops.materialize(req.store_path, req.dest)
            case api.ReloadRequest():
                return await self.reload()
            case api.OutboxRequest():
                self.autopublish.wake()
                return api.Queued(await self.autopublish.waiting())
            case api.MountRequest():
                return await self.mounts.mount(
                    StorePath.parse(req.store_path), req.dir, req.backend
                )
            case api.RealiseRequest():
                return await self.mounts.realise(
                    [StorePath.parse(p) for p in req.store_paths],
                    req.lazy,
                    req.backend,
                    _every_fifth_second(progress),
                )
            case api.UmountRequest():
                return await self.mounts.umount(req.dir)
            case api.MountsRequest():
                return self.mounts.report()

    async def reload(self) -> api.Reloaded:
        """Read the settings and the trust policy again and use them; if either is bad,
        keep what runs and say why (ControlError)."""
        if self._reread is None:
            raise ControlError("this node was started without a settings file to read again")
        try:
            new = await trio.to_thread.run_sync(self._reread)
            policy = (
                await trio.to_thread.run_sync(policyfile.load, new.policy) if new.policy else None
            )
            key = keyfile.load_secret(new.publish_key) if new.publish_key else None
        except (ConfigError, PolicyError, keyfile.KeyFileError) as e:
            raise ControlError(
                f"not reloaded, the node keeps its settings and policy: {e}"
            ) from None
        old = self.config
        differ = [
            f.name
            for f in dataclasses.fields(NodeConfig)
            if f.compare and getattr(old, f.name) != getattr(new, f.name)
        ]
        changed = [n for n in differ if n in LIVE_SETTINGS]
        if old.policy and new.policy == old.policy and policy != self.policy:
            changed.append("policy")  # same file, new contents
        restart = [n for n in differ if n not in LIVE_SETTINGS]
        self.config = dataclasses.replace(old, **{n: getattr(new, n) for n in LIVE_SETTINGS})
        self.policy = self.sessions.policy = policy
        self._trust(policy)
        self.collector.max_size = new.max_store_size
        self.autopublish.key = key
        if key is not None:
            self.witnessing.add_key(key)
        log.info(
            "reloaded: policy %s%s%s",
            _describe(policy, new.policy),
            f"; changed: {', '.join(sorted(set(changed)))}" if changed else "",
            f"; needs a restart to change: {', '.join(restart)}" if restart else "",
        )
        return api.Reloaded(self._policy_in_use(), tuple(sorted(set(changed))), tuple(restart))

    def _policy_in_use(self) -> api.PolicyInUse | None:
        if self.policy is None or self.config.policy is None:
            return None
        return api.PolicyInUse(
            self.config.policy,
            tuple(k.encode() for k in self.policy.trusted),
            self.policy.threshold,
            str(self.policy.on_conflict),
        )

    async def _status(self) -> api.Status:
        # From the peer-facing connection: a status must not wait for a long fetch.
        stats = await self.store.read(self.store.reader.stats)
        return api.Status(
            peer_id=str(self.peer_id),
            addrs=tuple(str(a) for a in self.host.get_addrs()),
            data_dir=self.data_dir,
            peers=len(self.discovery.peers()),
            policy=self.config.policy,
            served_blocks=self.served.blocks,
            served_bytes=self.served.bytes,
            dht=self.discovery.dht is not None,
            gossip=self.discovery.pubsub is not None,
            gateway=self.gateway_url,
            gateway_key=self.gateway_key.public.encode() if self.gateway_key else None,
            store=api.StoreSummary(
                stats.paths, stats.complete_paths, stats.unique_chunks, stats.unique_bytes
            ),
            policy_in_use=self._policy_in_use(),
            publishing=(
                f"watching {self.config.nix_store or 'the system Nix store'}"
                if self.config.watch_store
                else None
            ),
            outbox=await self.autopublish.waiting(),
            packing=self.prepacker.waiting,
            packed_runs_served=self.store.packer.pack_hits,
            reachability=self.reachability.status,
            public_addr=self.reachability.address,
            relay=self.relay_service.report(),
            relays=self.relays.report(),
            caught=self.witnessing.report(),
            revoked_claims=len(self.witnessing.witness.revocations),
        )

    async def _fetch(self, req: api.FetchRequest, progress: control.OnProgress) -> api.Fetched:
        target = StorePath.parse(req.store_path)
        async with self.sessions.recording(on_progress=_every_fifth_second(progress)) as (
            fetch,
            _,
        ):
            started = trio.current_time()
            try:
                plans = await fetch.run(target, closure=req.closure)
            except FetchError as e:
                cut = self.relays.cut_since(started)
                if type(e) is not FetchError or cut is None:
                    raise
                raise FetchError(f"{e}\n{cut}") from None
        # Found by what was asked for: a fetcher of the same closure finds this node by
        # its root and asks it for the rest. The references get their provider records
        # with the next reprovide; at once, each cost a DHT walk and a record per path,
        # most of the bytes of a small update.
        await self.discovery.announce([], [target])
        return api.Fetched(
            tuple(
                api.FetchedPath(
                    str(p.store_path),
                    str(p.manifest.nar_hash),
                    tuple(p.verdict.signers),
                    p.complete,
                )
                for p in plans
            ),
            fetch_progress(fetch.progress),
            {
                peer: via
                for peer in fetch.progress.per_peer
                if (via := self.relays.relayed_via(peer, started)) is not None
            },
        )

    async def _prove_claims(self, claims: list[SignedClaim], peers: list[str]) -> int:
        return await self.witnessing.prove_claims(claims, peers, self.discovery.open_stream)

    async def _revoke_claim(self, req: api.RevokeClaimRequest) -> api.ClaimsRevoked:
        try:
            key = keyfile.load_secret(req.key)
        except keyfile.KeyFileError as e:
            raise ControlError(str(e), Failure.USAGE) from None
        target = StorePath.parse(req.store_path)
        withdrawn = self.witnessing.withdrawn()
        mine = [
            c.claim
            for c in await self.store.claims_for(target.hash_part)
            if c.builder.key == key.public.key
            and c.claim.store_path == target
            and (key.public.key, claim_digest(c.claim)) not in withdrawn
        ]
        if not mine:
            raise ControlError(
                f"this node holds no claim by {key.public} for {target} that is not revoked "
                "already (revoke on the node that published it, or one that fetched it)",
                Failure.USAGE,
            )
        self.witnessing.add_key(key, req.key)
        logged = self.witnessing.revoke_claims(key, mine)
        await self.witnessing.announce(logged)
        size = logged[-1].head.head.size
        return api.ClaimsRevoked(
            str(key.public),
            tuple(
                api.RevokedClaim(str(c.store_path), str(c.nar_hash), c.time, x.index, size)
                for c, x in zip(mine, logged, strict=True)
            ),
        )

    async def _publish(self, req: api.PublishRequest) -> api.Published:
        try:
            key = keyfile.load_secret(req.key) if req.key else None
        except keyfile.KeyFileError as e:
            raise ControlError(str(e)) from None
        if key is not None:
            self.witnessing.add_key(key, req.key)
        pub = await self.store.publish(req.source, key, root=req.root)
        manifest, signed = pub.manifest, pub.signed
        await self._announce(signed, [manifest.store_path])
        s = manifest.stats()
        refs = [str(r) for r in manifest.references if r != manifest.store_path]
        index = self.store.reader.index
        unpublished = await self.store.read(lambda: [r for r in refs if index.path(r) is None])
        return api.Published(
            store_path=str(manifest.store_path),
            nar_hash=str(manifest.nar_hash),
            nar_size=manifest.nar_size,
            manifest_digest=manifest.digest().hex(),
            chunks=s.chunks,
            unique_chunks=s.unique_chunks,
            new_chunks=pub.new_chunks,
            new_bytes=pub.new_bytes,
            root=req.root,
            claim=signed[0].nix_sig().encode() if signed else None,
            signer=key.name if key else None,
            data_dir=self.data_dir,
            unpublished=tuple(unpublished),
        )

    async def _publish_store(
        self, req: api.PublishStoreRequest, progress: control.OnProgress
    ) -> api.StorePublished:
        try:
            key = keyfile.load_secret(req.key) if req.key else None
        except keyfile.KeyFileError as e:
            raise ControlError(str(e)) from None
        if key is not None:
            self.witnessing.add_key(key, req.key)
        nix_store = self.config.nix_store if req.store is None else req.store
        token = trio.lowlevel.current_trio_token()
        asked = [0, 0]  # paths and NAR bytes to publish, once planned

        def on_batch(batch: Bulk, total: Bulk) -> None:
            # On the writer's thread, between batches.
            done = len(total.published) + len(total.skipped)
            trio.from_thread.run(
                progress,
                api.PublishProgress(asked[0], done, asked[1], total.nar_bytes, total.new_bytes),
                trio_token=token,
            )

        def planned(n: int, size: int) -> None:
            asked[:] = [n, size]

        bulk = await self.autopublish.publish(
            req.paths,
            nix_store,
            key,
            closure=req.closure,
            every=req.every,
            root=req.root,
            on_plan=planned,
            on_batch=on_batch,
        )
        return autopublish.summary(bulk, key, self.data_dir)


def _describe(policy: QuorumPolicy | None, file: str | None) -> str:
    if policy is None:
        return "none (cannot fetch)"
    return f"{file}: {policy.threshold} of {len(policy.trusted)} keys"


def fetch_progress(p: Progress) -> api.FetchProgress:
    return api.decode(api.FetchProgress, p.as_dict())


def _remove_files(data_dir: str, names: Sequence[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(data_dir, name))
        except FileNotFoundError:
            pass


def check_listen(listen: Sequence[str]) -> None:
    """ConfigError for a TCP listen address another process holds. libp2p binds with
    SO_REUSEPORT: a second node on a running node's port would start, log success and
    take half of its connections."""
    for a in listen:
        ma = multiaddr.Multiaddr(a)
        protocols = [p.name for p in ma.protocols()]
        if "tcp" not in protocols or not {"ip4", "ip6"} & set(protocols):
            continue
        family = socket.AF_INET if "ip4" in protocols else socket.AF_INET6
        host = ma.value_for_protocol("ip4" if family == socket.AF_INET else "ip6")
        port = int(ma.value_for_protocol("tcp"))
        if port == 0:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                s.bind((host, port))
            except OSError as e:
                held = " (another ferry node?)" if e.errno == errno.EADDRINUSE else ""
                raise ConfigError(
                    f"listen: cannot listen on {a}: {e.strerror or e}{held}; stop it, or "
                    "choose another address with --listen or `listen` in node.toml"
                ) from None


def _on_loopback(stream: INetStream) -> bool:
    try:
        addr = stream.get_remote_address()
        return addr is not None and ipaddress.ip_address(addr[0]).is_loopback
    except (ValueError, OSError):
        return False
