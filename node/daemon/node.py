"""A running ferry node: the libp2p host, the exchange protocols, discovery, the local
store, and the control API, in one trio nursery that owns them all."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, cast

import msgpack
import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from node.daemon import control
from node.daemon.config import NodeConfig
from node.daemon.control import ControlError
from node.daemon.mounts import Mounts
from node.exchange.bases import chunk_bases, package_name, pick_base
from node.exchange.fetch import Fetch, FetchError, FetchRefused, FetchSettings, Plan, Progress
from node.exchange.peers import PeerBook
from node.exchange.server import Served, serve_blocks, serve_claims
from node.exchange.subscriptions import Subscriptions
from node.exchange.uplink import Uplink
from node.gateway import key as gateway_key
from node.gateway.app import Gateway, GatewaySettings, NoPolicy
from node.gateway.metrics import Metrics
from node.local.errors import StoreError
from node.local.store import Ingest, LocalStore, StoreReader
from p2p import blocks, claims
from p2p.blocks import BlockServer, Reply
from p2p.host import HostLimits, Notifee, make_host
from p2p.identity import load_or_create
from p2p.stream import ByteStream, abort
from store import userfile
from store.export import ChunkMissing, ChunkSource
from store.hash import Hash
from store.manifest import Manifest
from store.path import StorePath, StorePathError
from trust import policyfile
from trust.claim import ClaimError, SignedClaim
from trust.key import SecretKey
from trust.policy import QuorumPolicy
from trust.signature import NixSignature
from trust.signature import sign as nix_sign

log = logging.getLogger(__name__)

ADDR_FILE = "node.addr"
GOSSIP_TOPIC = "ferry/claims/1"
GOSSIP_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
BOOTSTRAP_RETRY = 30.0
BOOTSTRAP_MIN_GAP = 2.0
REPROVIDE = 3600.0
GATEWAY_FILE = "gateway.url"
USAGE = 2  # exit codes the control API hands to the CLI (see `ferry fetch --help`)
REFUSED = 3


class Node:
    def __init__(self, data_dir: str, config: NodeConfig, store: LocalStore) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.config = config
        self.store = store
        self.policy: QuorumPolicy | None = policyfile.load(config.policy) if config.policy else None
        self.book = PeerBook(ban_seconds=config.ban_seconds)
        self.served = Served()
        self.metrics = Metrics()
        self.mounts = Mounts(self)
        self.keys = load_or_create(self.data_dir)
        self.host: IHost = make_host(
            self.keys,
            HostLimits(max_connections=config.max_connections),
            mdns=config.mdns,
            listen=[multiaddr.Multiaddr(a) for a in config.listen],
        )
        self.peer_id = self.host.get_id()
        self.dht: KadDHT | None = None
        self.pubsub: Pubsub | None = None
        # The main store connection is for writes, one session at a time; peers are served
        # from a second connection so a long fetch or publish never stalls them.
        self.write_lock = trio.Lock()
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self.subscriptions = Subscriptions()  # peers' want-haves of chunks not here yet
        self.uplink = Uplink(config.upload_slots)
        self.reader: StoreReader = store.reader()
        self.gateway_key: SecretKey | None = (
            gateway_key.load_or_create(self.data_dir, config.gateway_key)
            if config.gateway != "off"
            else None
        )
        self.gateway_url: str | None = None
        self.started = trio.Event()
        # Set once every bootstrap peer has been tried: a fetch asked for at start-up waits
        # for it rather than finding nobody to ask.
        self.bootstrapped = trio.Event()
        self._lost = trio.Event()  # a connection closed: bootstrap peers are redialled soon
        self.host.get_network().register_notifee(_Gate(self.book, self._on_lost))
        # Provider records are written by one task of the node's own: a DHT walk can take
        # seconds (dead routing-table entries), and no fetch or publish should wait for it.
        self._to_provide, self._providing = trio.open_memory_channel[StorePath](math.inf)
        self._queued: set[StorePath] = set()

    # --- running

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = await control.bind(self.data_dir)
        try:
            # No other node runs on this data directory (bind checked): "ready" files here
            # were left by one that was killed, and must not announce this one early.
            _remove_files(self.data_dir, (ADDR_FILE, GATEWAY_FILE))
            async with (
                self.host.run([multiaddr.Multiaddr(a) for a in self.config.listen]),
                AsyncExitStack() as stack,
            ):
                try:
                    self.host.set_stream_handler(TProtocol(blocks.PROTOCOL), self._on_blocks)
                    self.host.set_stream_handler(TProtocol(claims.PROTOCOL), self._on_claims)
                    if self.config.dht:
                        self.dht = KadDHT(self.host, DHTMode.SERVER)
                        await stack.enter_async_context(background_trio_service(self.dht))
                    if self.config.gossip:
                        router = GossipSub(GOSSIP_PROTOCOLS, 6, 4, 12, heartbeat_interval=1)
                        self.pubsub = Pubsub(self.host, router)
                        await stack.enter_async_context(background_trio_service(self.pubsub))
                        await self.pubsub.wait_until_ready()
                    addrs = [str(a) for a in self.host.get_addrs()]
                    for a in addrs:
                        log.info("listening on %s", a)
                    async with trio.open_nursery() as nursery:
                        if self.gateway_key is not None:
                            await nursery.start(self._serve_gateway)
                        await nursery.start(self.mounts.run)
                        await nursery.start(control.serve, listener, self._control)
                        nursery.start_soon(self._keep_bootstrap)
                        if self.pubsub is not None:
                            nursery.start_soon(self._gossip_listener)
                        if self.dht is not None:
                            nursery.start_soon(self._reprovide)
                            nursery.start_soon(self._provider)
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
            _remove_files(self.data_dir, (control.SOCKET, ADDR_FILE, GATEWAY_FILE))
            self.reader.close()

    async def _keep_bootstrap(self) -> None:
        infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in self.config.bootstrap]
        while True:
            async with trio.open_nursery() as nursery:
                for info in infos:
                    if (
                        info.peer_id != self.peer_id
                        and info.peer_id not in self.host.get_connected_peers()
                    ):
                        nursery.start_soon(self._connect, info)
            self.bootstrapped.set()
            await trio.sleep(
                BOOTSTRAP_MIN_GAP
            )  # a peer that drops us at once is not redialled in a loop
            with trio.move_on_after(BOOTSTRAP_RETRY - BOOTSTRAP_MIN_GAP):
                await self._lost.wait()
            self._lost = trio.Event()

    def _on_lost(self) -> None:
        self._lost.set()

    async def _connect(self, info: PeerInfo) -> bool:
        if self.book.banned(str(info.peer_id), trio.current_time()):
            return False
        with trio.move_on_after(self.config.request_timeout):
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

    # --- serving peers

    def _peer_of(self, stream: INetStream) -> str:
        return str(stream.muxed_conn.peer_id)

    async def _refuse_banned(self, stream: INetStream, peer: str) -> bool:
        if not self.book.banned(peer, trio.current_time()):
            return False
        await abort(stream)
        await self.punish(peer, None)
        return True

    async def _on_blocks(self, stream: INetStream) -> None:
        peer = self._peer_of(stream)
        if await self._refuse_banned(stream, peer):
            return
        record = self.book.get(peer)

        def sent(blocks: int, size: int) -> None:
            self.served.add(blocks, size)
            record.sent_bytes += size

        try:
            await serve_blocks(stream, peer, self, self.punish, sent, self.uplink)
        except Exception:
            # A bug met while serving one peer must not stop the node serving the rest.
            log.exception("serving blocks to %s failed", peer)
            await abort(stream)

    async def _on_claims(self, stream: INetStream) -> None:
        peer = self._peer_of(stream)
        if await self._refuse_banned(stream, peer):
            return
        try:
            await serve_claims(stream, peer, self, self.punish)
        except Exception:
            log.exception("serving claims to %s failed", peer)
            await abort(stream)

    async def blobs(self, digests: list[bytes]) -> dict[bytes, bytes]:
        return await trio.to_thread.run_sync(self.reader.blobs, digests, limiter=self._read_limiter)

    async def present(self, digests: list[bytes]) -> set[bytes]:
        def work() -> set[bytes]:
            return {d for d, r in self.reader.index.chunks(digests).items() if r.present}

        return await trio.to_thread.run_sync(work, limiter=self._read_limiter)

    def chunks_added(self) -> None:
        """Wake the servers' subscriptions (want-haves of chunks that were not here):
        the store commits in batches, so which chunks became servable is not known."""
        self.subscriptions.stored(None)

    async def encode_reply(self, replies: list[Reply], prefixes: dict[bytes, bytes]) -> bytes:
        return await trio.to_thread.run_sync(
            partial(
                BlockServer.reply, replies, dictionaries=prefixes, diff_level=self.config.diff_level
            )
        )

    async def claims_for(self, path_hash: str) -> list[SignedClaim]:
        return await trio.to_thread.run_sync(
            self.reader.claims_by_hash, path_hash, limiter=self._read_limiter
        )

    async def learn(self, found: list[SignedClaim], source: str) -> int:
        if not found:
            return 0
        n = await trio.to_thread.run_sync(self.reader.add_claims, found, limiter=self._read_limiter)
        if n:
            log.info("learned %d new claims from %s", n, source)
        return n

    # --- the fetcher's view of the network

    def peers(self) -> list[str]:
        now = trio.current_time()
        return [
            str(p) for p in self.host.get_connected_peers() if not self.book.banned(str(p), now)
        ]

    async def open_stream(self, peer: str, protocol: str) -> ByteStream:
        return await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])

    async def providers(self, path_hash: str) -> list[str]:
        if self.dht is None:
            return []
        found = await self.dht.find_providers(_dht_key(path_hash))
        out: dict[str, PeerInfo] = {}
        for info in found:  # py-libp2p returns duplicates
            if info.peer_id != self.peer_id:
                out.setdefault(str(info.peer_id), info)
        connected = {str(p) for p in self.host.get_connected_peers()}
        for peer, info in out.items():
            if peer not in connected and info.addrs:
                await self._connect(info)
        return [p for p in out if p in {str(c) for c in self.host.get_connected_peers()}]

    async def punish(self, peer: str, problem: str | None) -> None:
        """Ban the peer for `problem` and disconnect it (None: it is banned already)."""
        if problem is not None:
            self.book.punish(peer, problem, trio.current_time())
        if self.dht is not None:
            self.dht.routing_table.remove_peer(
                ID.from_base58(peer)
            )  # or a DHT query dials it again
        try:
            await self.host.disconnect(ID.from_base58(peer))
        except Exception as e:  # noqa: BLE001 - already gone: the ban is what matters
            log.debug("disconnecting %s: %s", peer, e)

    # --- announcing

    async def announce(self, signed: Sequence[SignedClaim], complete: Sequence[StorePath]) -> None:
        """Tell peers about new claims (push and gossip); queue new complete paths for the DHT."""
        if signed:
            payload = claims.encode(claims.Push(tuple(c.encode() for c in signed)))
            async with trio.open_nursery() as nursery:
                for peer in self.peers():
                    nursery.start_soon(self._push, peer, payload)
            if self.pubsub is not None:
                try:
                    await self.pubsub.publish(
                        GOSSIP_TOPIC, msgpack.packb([c.encode() for c in signed])
                    )
                except Exception as e:  # noqa: BLE001 - gossip is best effort: pushes and queries carry the claims too
                    log.info("gossip publish failed: %s", e)
        if self.dht is not None:
            for sp in complete:
                if sp not in self._queued:
                    self._queued.add(sp)
                    self._to_provide.send_nowait(sp)

    async def _provider(self) -> None:
        assert self.dht is not None
        async for sp in self._providing:
            self._queued.discard(sp)
            with trio.move_on_after(self.config.request_timeout):
                try:
                    await self.dht.provide(_dht_key(sp.hash_part))
                except Exception as e:  # noqa: BLE001 - the DHT is one way of many to be found
                    log.info("DHT provide of %s failed: %s", sp, e)

    async def _push(self, peer: str, payload: bytes) -> None:
        with trio.move_on_after(self.config.request_timeout):
            try:
                stream = await self.open_stream(peer, claims.PROTOCOL)
                await stream.write(payload)
                await stream.read(64)
                await stream.close()
            except Exception as e:  # noqa: BLE001 - the peer will ask for the claims when it needs them
                log.info("pushing claims to %s failed: %s", peer, e)

    async def _gossip_listener(self) -> None:
        assert self.pubsub is not None
        sub = await self.pubsub.subscribe(GOSSIP_TOPIC)
        while True:
            msg = await sub.get()
            try:
                raw = msgpack.unpackb(
                    msg.data, raw=False, max_array_len=claims.MAX_CLAIMS, max_map_len=0
                )
                found = [SignedClaim.decode(r) for r in raw if isinstance(r, bytes)]
            except (ClaimError, ValueError, TypeError, msgpack.UnpackException):
                continue  # gossip is a hint: junk is dropped, never trusted
            await self.learn([c for c in found if c.valid()], "gossip")

    async def _reprovide(self) -> None:
        while True:
            complete = await trio.to_thread.run_sync(
                self.reader.complete_paths, limiter=self._read_limiter
            )
            await self.announce([], [StorePath.parse(p) for p in complete])
            await trio.sleep(REPROVIDE)

    # --- the Nix gateway

    async def _serve_gateway(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        import hypercorn.config
        import hypercorn.trio

        host, port = self.config.gateway_bind
        cfg = hypercorn.config.Config()
        cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        cfg.accesslog = None
        cfg.errorlog = logging.getLogger("node.gateway.http")
        cfg.graceful_timeout = 1.0
        backend = _GatewayBackend(self)
        app = Gateway(
            backend, GatewaySettings(self.config.store_dir, self.config.priority), self.metrics
        )

        try:
            _check_bind(host, port, self.config.gateway)
            async with trio.open_nursery() as nursery:
                # The gateway types its ASGI messages as plain dicts, not hypercorn's TypedDicts.
                serve = partial(hypercorn.trio.serve, app, cfg, mode="asgi")  # type: ignore[arg-type]
                binds = await nursery.start(serve)
                self.gateway_url = binds[0]
                userfile.write_atomically(
                    os.path.join(self.data_dir, GATEWAY_FILE),
                    (binds[0] + "\n").encode(),
                    "the gateway address file",
                )
                assert self.gateway_key is not None
                log.info(
                    "Nix gateway on %s (signing key %s)", binds[0], self.gateway_key.public.encode()
                )
                task_status.started()
        finally:
            backend.close()

    def fetch_settings(self, **overrides: Any) -> FetchSettings:
        """A fetch session's settings, from the node's: made here only, so that every
        session (a fetch, a narinfo, a mount's fills) honours every setting."""
        return FetchSettings(
            request_timeout=self.config.request_timeout, diffs=self.config.diffs, **overrides
        )

    def account(self, fetch: Fetch) -> None:
        """Count a finished (or failed) session's traffic in the peer book and metrics."""
        p = fetch.progress
        for peer, n in p.per_peer.items():
            self.book.get(peer).received_bytes += n
        self.metrics.fetched_bytes.inc(p.bytes_done)
        self.metrics.fetched_chunks.inc(p.chunks_done)
        self.metrics.deduplicated_chunks.inc(p.deduplicated_chunks)
        self.metrics.deduplicated_bytes.inc(p.deduplicated_bytes)
        self.metrics.received_bytes.inc(p.received_bytes)
        self.metrics.diff_logical_bytes.inc(p.diff_logical_bytes)
        self.metrics.diff_received_bytes.inc(p.diff_received_bytes)

    # --- control API

    async def _control(
        self, req: dict[str, Any], progress: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> Any:
        op = req["op"]
        if op == "status":
            return await self._status()
        if op == "peers":
            return self._peers_report()
        if op == "fetch":
            return await self._fetch(req, progress)
        if op == "publish":
            return await self._publish(req)
        if op == "mount":
            return await self.mounts.mount(
                _store_path(req), str(req.get("dir")), str(req.get("backend", "auto"))
            )
        if op == "umount":
            return await self.mounts.umount(str(req.get("dir")))
        if op == "mounts":
            return self.mounts.report()
        raise ControlError(f"unknown request {op!r}", USAGE)

    async def _status(self) -> dict[str, Any]:
        # From the peer-facing connection: a status must not wait for a long fetch.
        stats = await trio.to_thread.run_sync(self.reader.stats, limiter=self._read_limiter)
        return {
            "peer_id": str(self.peer_id),
            "addrs": [str(a) for a in self.host.get_addrs()],
            "data_dir": self.data_dir,
            "peers": len(self.peers()),
            "policy": self.config.policy,
            "served_blocks": self.served.blocks,
            "served_bytes": self.served.bytes,
            "dht": self.dht is not None,
            "gossip": self.pubsub is not None,
            "gateway": self.gateway_url,
            "gateway_key": self.gateway_key.public.encode() if self.gateway_key else None,
            "store": {
                "paths": stats.paths,
                "complete_paths": stats.complete_paths,
                "unique_chunks": stats.unique_chunks,
                "unique_bytes": stats.unique_bytes,
            },
        }

    def _peers_report(self) -> list[dict[str, Any]]:
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
                {
                    "peer_id": peer,
                    "connected": peer in connected,
                    "addrs": addrs,
                    "sent_bytes": r.sent_bytes,
                    "received_bytes": r.received_bytes,
                    "bad": r.bad,
                    "banned_for": max(0.0, r.banned_until - now),
                    "last_problem": r.last_problem,
                }
            )
        return out

    async def _fetch(
        self, req: dict[str, Any], progress: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> Any:
        if self.policy is None:
            raise ControlError(
                "this node has no trust policy, so it cannot accept paths: "
                "start it with --policy FILE (see `ferry trust --help`)"
            )
        try:
            target = StorePath.parse(str(req.get("store_path")))
        except StorePathError as e:
            raise ControlError(str(e), USAGE) from None
        last = [0.0]
        await self.bootstrapped.wait()

        async def report(p: Progress) -> None:
            now = trio.current_time()
            if now - last[0] >= 0.2 or p.chunks_done == p.chunks:
                last[0] = now
                await progress(p.as_dict())

        async with self.write_lock:
            local = _FetchStore(self)
            fetch = Fetch(self, local, self.policy, self.fetch_settings(), on_progress=report)
            try:
                plans = await fetch.run(target, closure=bool(req.get("closure")))
            except FetchRefused as e:
                raise ControlError(str(e), REFUSED) from None
            except FetchError as e:
                raise ControlError(str(e)) from None
            finally:
                local.close()
                self.account(fetch)
        await self.announce([], [p.store_path for p in plans])
        return {
            "fetched": [
                {
                    "store_path": str(p.store_path),
                    "nar_hash": str(p.manifest.nar_hash),
                    "signers": list(p.verdict.signers),
                    "had": p.complete,
                }
                for p in plans
            ],
            **fetch.progress.as_dict(),
        }

    async def _publish(self, req: dict[str, Any]) -> Any:
        from node.cli import source  # the CLI's source options are the request's vocabulary
        from trust import claim as claimmod
        from trust import keyfile

        args = argparse.Namespace(**req["args"])
        try:
            key = keyfile.load_secret(args.key) if args.key else None
        except keyfile.KeyFileError as e:
            raise ControlError(str(e)) from None

        def work() -> tuple[Manifest, list[SignedClaim], int, int]:
            with self.store.ingest() as ingest:
                manifest = source.build_manifest(args, on_chunk=ingest.add_chunk)
                signed = [claimmod.sign_manifest(manifest, key)] if key else []
                ingest.commit(manifest, claims=signed, root=not args.no_root)
            return manifest, signed, ingest.new_chunks, ingest.new_bytes

        async with self.write_lock:
            try:
                manifest, signed, new_chunks, new_bytes = await trio.to_thread.run_sync(
                    _user_errors(work, args), limiter=self._write_limiter
                )
            except StoreError as e:
                raise ControlError(str(e)) from None
        self.chunks_added()
        await self.announce(signed, [manifest.store_path])
        s = manifest.stats()
        return {
            "store_path": str(manifest.store_path),
            "nar_hash": str(manifest.nar_hash),
            "nar_size": manifest.nar_size,
            "manifest_digest": manifest.digest().hex(),
            "chunks": s.chunks,
            "unique_chunks": s.unique_chunks,
            "new_chunks": new_chunks,
            "new_bytes": new_bytes,
            "root": not args.no_root,
            "claim": signed[0].nix_sig().encode() if signed else None,
            "signer": key.name if key else None,
            "data_dir": self.data_dir,
        }


def _user_errors(work: Callable[[], Any], args: argparse.Namespace) -> Callable[[], Any]:
    """Source errors (a missing file, a bad NAR) as ControlError, worded as the CLI words them."""
    from node.cli import source

    def run() -> Any:
        try:
            return work()
        except Exception as e:
            message = source.user_error(e, args)
            if message is None:
                raise
            raise ControlError(message) from None

    return run


class _Gate(Notifee):
    """Closes any connection with a banned peer, whoever dialed it; reports lost ones."""

    def __init__(self, book: PeerBook, on_lost: Callable[[], None]) -> None:
        self.book = book
        self.on_lost = on_lost

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        if self.book.banned(str(conn.muxed_conn.peer_id), trio.current_time()):
            log.info("closing a connection with banned peer %s", conn.muxed_conn.peer_id)
            await conn.close()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.on_lost()


def _remove_files(data_dir: str, names: Sequence[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(data_dir, name))
        except FileNotFoundError:
            pass


def _dht_key(path_hash: str) -> str:
    return f"/ferry/path/{path_hash}"


class _FetchStore:
    """The store as one fetch session sees it (the caller holds the node's write lock)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._ingest: Ingest | None = None
        # Paths recorded when the session began: the candidate bases (a path it records
        # itself is incomplete until it ends, so never one). Read once, not per path.
        self._recorded: list[StorePath] | None = None

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.node._write_limiter)

    async def state(self, sp: StorePath) -> tuple[Manifest, bool] | None:
        return await trio.to_thread.run_sync(
            self.node.reader.path_state, str(sp), limiter=self.node._read_limiter
        )

    async def claims(self, hash_part: str) -> list[SignedClaim]:
        return await self.node.claims_for(hash_part)

    async def learn(self, found: list[SignedClaim], source: str) -> int:
        return await self.node.learn(found, source)

    async def reserve(self, plans: Sequence[Plan], roots: set[str]) -> dict[bytes, int]:
        def work() -> dict[bytes, int]:
            missing: dict[bytes, int] = {}
            for p in plans:
                sizes = {d: n for _, _, n, d in p.manifest.chunk_spans()}
                absent = self.node.store.reserve(
                    p.manifest, claims=p.verdict.claims, root=str(p.store_path) in roots
                )
                missing.update((d, sizes[d]) for d in absent)
            return missing

        return await self._write(work)

    async def bases(self, plans: Sequence[Plan]) -> dict[bytes, tuple[bytes, ...]]:
        reader = self.node.reader

        def work() -> dict[bytes, tuple[bytes, ...]]:
            recorded = self._recorded_paths()
            out: dict[bytes, tuple[bytes, ...]] = {}
            for plan in plans:
                base = self._base(plan.store_path, recorded)
                if base is not None:
                    rows = reader.index.chunks(list(set(base.chunk_digests())))
                    out.update(
                        chunk_bases(plan.manifest, base, {d for d, r in rows.items() if r.present})
                    )
            return out

        return await trio.to_thread.run_sync(work, limiter=self.node._read_limiter)

    async def base_manifest(self, store_path: StorePath) -> Manifest | None:
        def work() -> Manifest | None:
            return self._base(store_path, self._recorded_paths())

        return await trio.to_thread.run_sync(work, limiter=self.node._read_limiter)

    def _recorded_paths(self) -> list[StorePath]:
        if self._recorded is None:
            self._recorded = [StorePath.parse(p.store_path) for p in self.node.reader.index.paths()]
        return self._recorded

    def _base(self, sp: StorePath, recorded: list[StorePath]) -> Manifest | None:
        """The manifest of the closest complete version of `sp`'s package (on a worker
        thread). Names first, from one query; completeness only for the same package:
        a check per recorded path would be a query each."""
        reader = self.node.reader
        name = package_name(sp)
        local = [
            p
            for p in recorded
            if package_name(p) == name and not reader.index.missing_chunks(str(p))
        ]
        base = pick_base(sp, local)
        state = reader.path_state(str(base)) if base is not None else None
        return state[0] if state is not None else None

    async def read_chunks(self, digests: list[bytes]) -> dict[bytes, bytes]:
        return await trio.to_thread.run_sync(
            self.node.reader.blobs, digests, limiter=self.node._read_limiter
        )

    async def store_blocks(self, found: list[tuple[bytes, bytes]]) -> None:
        def work() -> None:
            if self._ingest is None:
                self._ingest = self.node.store.ingest()
            for d, data in found:
                self._ingest.add_chunk(d, data)

        await self._write(work)
        self.node.chunks_added()  # those in committed batches are servable now

    async def save(self) -> None:
        if self._ingest is not None:
            await self._write(self._ingest.save)
            self.node.chunks_added()

    def close(self) -> None:
        if self._ingest is not None:
            self._ingest.close()
            self._ingest = None


def _store_path(req: dict[str, Any]) -> StorePath:
    try:
        return StorePath.parse(str(req.get("store_path")))
    except StorePathError as e:
        raise ControlError(str(e), USAGE) from None


def _check_bind(host: str, port: int, setting: str) -> None:
    """Fail with a message that names the setting, before hypercorn fails with a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise ControlError(
            f"cannot serve the gateway on {setting}: {e.strerror or e} "
            "(choose another with --gateway HOST:PORT, or --no-gateway)"
        ) from None


class _GatewayBackend:
    """The node as the gateway sees it: plans by path hash, fetches into the store, reads
    chunks on a connection of its own (so Nix downloads do not queue behind peers)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.reader = node.store.reader()
        self.limiter = trio.CapacityLimiter(1)  # one SQLite connection: one thread at a time

    def close(self) -> None:
        self.reader.close()

    def _fetch(self) -> Fetch:
        node = self.node
        if node.policy is None:
            raise NoPolicy(
                "this node has no trust policy, so it trusts nothing: start it with --policy FILE"
            )
        return Fetch(
            node,
            _FetchStore(node),
            node.policy,
            node.fetch_settings(connect_timeout=min(5.0, node.config.narinfo_timeout)),
        )

    async def plan(self, hash_part: str) -> Plan:
        fetch = self._fetch()
        await self.node.bootstrapped.wait()
        try:
            with trio.fail_after(self.node.config.narinfo_timeout):
                return await fetch.plan_hash(hash_part, self.node.config.store_dir)
        except trio.TooSlowError:
            raise FetchError(
                f"peers did not settle {hash_part} within narinfo_timeout "
                f"({self.node.config.narinfo_timeout:g} s)"
            ) from None

    async def plan_for_nar(self, nar_hash: Hash) -> Plan | None:
        sp = await trio.to_thread.run_sync(
            self.reader.path_by_nar_hash, str(nar_hash), limiter=self.limiter
        )
        if sp is None:
            return None
        try:
            return await self.plan(StorePath.parse(sp).hash_part)
        except (FetchError, NoPolicy) as e:
            log.info("NAR %s: %s", nar_hash, e)
            return None

    async def complete(self, plan: Plan) -> None:
        fetch = self._fetch()
        async with self.node.write_lock:
            local = cast(_FetchStore, fetch.local)
            try:
                await fetch.complete([plan], roots=set())
            finally:
                local.close()
                self.node.account(fetch)
        await self.node.announce([], [plan.store_path])

    def chunk_source(self) -> tuple[ChunkSource, trio.CapacityLimiter]:
        return _ReaderChunks(self.reader), self.limiter

    def sign(self, fingerprint: str) -> NixSignature:
        assert self.node.gateway_key is not None
        return nix_sign(self.node.gateway_key, fingerprint)


class _ReaderChunks:
    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def read_chunk(self, digest: bytes) -> bytes:
        data = self.reader.blobs([digest]).get(digest)  # verified: rot is never passed on
        if data is None:
            raise ChunkMissing(digest)
        return data
