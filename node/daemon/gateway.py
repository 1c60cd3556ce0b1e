"""The Nix gateway as the node runs it: the HTTP server (`node.gateway.http`) on the
configured address, and the node as the gateway sees it (GatewayBackend)."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import trio

from node.daemon.ahead import Ahead
from node.daemon.config import NodeConfig
from node.daemon.nodestore import NodeStore
from node.daemon.session import FetchSessions
from node.exchange.fetch import FetchError, NoClaims, NoPolicy, Plan
from node.exchange.schedule import Schedule
from node.gateway import http
from node.gateway.app import PIECE, Gateway, GatewaySettings, first
from node.gateway.metrics import Metrics
from node.local.store import ReaderChunks
from store import userfile
from store.export import ChunkSource
from store.hash import Hash
from store.path import StorePath
from trust.key import SecretKey
from trust.signature import NixSignature
from trust.signature import sign as nix_sign

log = logging.getLogger(__name__)

GATEWAY_FILE = "gateway.url"
CLAIMS_WAIT = 1.0  # seconds a narinfo waits for a peer's claims
AHEAD_WAIT = 2.0  # seconds a narinfo waits for the batch planning it ahead (then asks alone)
AHEAD_CLAIMS_WAIT = 5.0  # seconds a batch planned ahead waits for a peer's claims

Announce = Callable[[Sequence[Any], Sequence[StorePath]], Awaitable[None]]


class GatewayUnavailable(Exception):
    """The gateway cannot listen where it is configured to; the message says what to do."""


class GatewayBackend:
    """Plans by path hash, fetches into the store, reads chunks on a connection of its
    own (so Nix downloads do not queue behind peers)."""

    def __init__(
        self,
        sessions: FetchSessions,
        store: NodeStore,
        config: NodeConfig,
        key: SecretKey,
        announce: Announce,
        busy: Callable[[], None],
        metrics: Metrics,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.key = key
        self.announce = announce
        self.busy = busy  # Nix waits on us: background upkeep holds off
        self.store = store
        self.reader = store.store.reader()
        self.summaries = store.summaries
        self.limiter = trio.CapacityLimiter(1)  # one SQLite connection: one thread at a time
        self.ahead = Ahead(
            self._plan_many,
            self._fill,
            self.summaries.known,
            lambda work, n: metrics.ahead.labels(work).inc(n),
        )

    def close(self) -> None:
        self.reader.close()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """What the backend does on its own (working ahead of Nix), until cancelled."""
        await self.ahead.run(task_status=task_status)

    async def plan(self, hash_part: str) -> Plan:
        """A narinfo's plan: a small path the store lacks is fetched at once."""
        plan = await self._plan(hash_part)
        self.ahead.wanted(plan)
        return plan

    def missing_now(self, hash_part: str) -> str | None:
        # Neither we nor any connected peer has a claim for it: answered from memory, as
        # most of what Nix asks is (the DHT is walked only for a path we heard of).
        self.busy()
        if (
            self.ahead.holds(hash_part)
            or not self.sessions.ready.is_set()
            or not self.summaries.settled
            or self.summaries.known(hash_part)
        ):
            return None
        return str(NoClaims(hash_part, self._asked()))

    def _asked(self) -> str:
        return f"neither this node nor its {len(self.summaries.peers)} connected peers"

    async def _plan(self, hash_part: str) -> Plan:
        self.busy()
        made = await self.ahead.plan(hash_part, AHEAD_WAIT)
        if made is not None:
            return made
        await self.sessions.ready.wait()
        await self.summaries.settle()
        if not self.summaries.known(hash_part):
            raise NoClaims(hash_part, self._asked())
        # Nix waits on every answer: a hung peer may cost a hit a second, never more.
        fetch = self.sessions.planning(
            connect_timeout=min(5.0, self.config.narinfo_timeout),
            claims_timeout=min(CLAIMS_WAIT, self.config.narinfo_timeout),
        )
        try:
            with trio.fail_after(self.config.narinfo_timeout):
                plan = await fetch.plan_hash(hash_part, self.config.store_dir)
        except trio.TooSlowError:
            raise FetchError(
                f"peers did not settle {hash_part} within narinfo_timeout "
                f"({self.config.narinfo_timeout:g} s)"
            ) from None
        self.ahead.planned(plan)
        return plan

    async def _plan_many(self, hashes: list[str]) -> dict[str, Plan]:
        # Nix waits on a batch for AHEAD_WAIT at most, then plans alone: a batch may take
        # longer (a busy peer answers hundreds of hashes), and what it plans still counts.
        fetch = self.sessions.planning(
            connect_timeout=min(5.0, self.config.narinfo_timeout),
            claims_timeout=min(AHEAD_CLAIMS_WAIT, self.config.narinfo_timeout),
        )
        return await fetch.plan_many(hashes, self.config.store_dir)

    async def plan_for_nar(self, nar_hash: Hash) -> Plan | None:
        sp = await trio.to_thread.run_sync(
            self.reader.path_by_nar_hash, str(nar_hash), limiter=self.limiter
        )
        if sp is None:
            return None
        try:
            return await self._plan(StorePath.parse(sp).hash_part)
        except (FetchError, NoPolicy) as e:
            log.info("NAR %s: %s", nar_hash, e)
            return None

    async def complete(self, plan: Plan) -> None:
        self.busy()
        running = self.ahead.filling(plan.store_path.hash_part)
        while running is not None and not running.is_set():
            changed = self.store.chunks_changed()
            if await self._holds(plan):
                return
            await first(changed.wait, running.wait)
        if not await self._holds(plan):  # else filled ahead, or by another request
            await self._fill([plan])

    def filled(self, plan: Plan) -> bool:
        return self.ahead.filled(plan)

    async def _holds(self, plan: Plan) -> bool:
        """Whether the store holds the planned path complete."""
        index, sp = self.store.reader.index, str(plan.store_path)

        def work() -> bool:
            row = index.path(sp)
            return (
                row is not None
                and row.manifest_digest == plan.verdict.manifest_digest
                and not index.missing_chunks(sp)
            )

        return await self.store.read(work)

    async def _fill(self, plans: list[Plan]) -> None:
        self.busy()
        timeout = min(5.0, self.config.narinfo_timeout)
        # In NAR order, not shuffled, and stored a piece at a time: the NAR streams to
        # Nix as its chunks arrive.
        async with self.sessions.recording(
            schedule=_in_order, fill_bytes=PIECE, connect_timeout=timeout
        ) as (fetch, _):
            await fetch.complete(plans, roots=set())
        self.busy()
        await self.announce([], [p.store_path for p in plans])

    def chunks_changed(self) -> trio.Event:
        return self.store.chunks_changed()

    def chunk_source(self) -> tuple[ChunkSource, trio.CapacityLimiter]:
        self.busy()
        return ReaderChunks(self.reader), self.limiter

    def using(self, store_path: str) -> AbstractContextManager[None]:
        return self.store.using([store_path])

    def sign(self, fingerprint: str) -> NixSignature:
        return nix_sign(self.key, fingerprint)


async def serve(
    backend: GatewayBackend,
    config: NodeConfig,
    metrics: Metrics,
    data_dir: str,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway until cancelled; started() with its URL once it accepts, which
    is also written to `gateway.url`."""
    host, port = config.gateway_bind
    given = activated_socket()
    if given is not None:
        # Socket activation: the socket outlives this process (systemd holds it), so
        # Nix's requests wait in its queue while the node starts or restarts.
        host = given.getsockname()[0]
        if not config.gateway_public and not ipaddress.ip_address(host).is_loopback:
            raise GatewayUnavailable(
                f"the socket handed over by the service manager listens on {host}, not a "
                "loopback address: bind it to 127.0.0.1 (ListenStream=127.0.0.1:PORT), or "
                "set gateway_public"
            )
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(given))]
    else:
        _check_bind(host, port, config.gateway)
        listeners = list(await trio.open_tcp_listeners(port, host=host))
    bound = listeners[0].socket.getsockname()
    url = f"http://[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"http://{bound[0]}:{bound[1]}"
    app = Gateway(backend, GatewaySettings(config.store_dir, config.priority), metrics)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            await nursery.start(functools.partial(http.serve, app, listeners, quick=app.quick))
            userfile.write_atomically(
                os.path.join(data_dir, GATEWAY_FILE),
                (url + "\n").encode(),
                "the gateway address file",
            )
            log.info("Nix gateway on %s (signing key %s)", url, backend.key.public.encode())
            task_status.started(url)
    finally:
        backend.close()
        for listener in listeners:
            listener.socket.close()


LISTEN_FDS_START = 3  # sd_listen_fds(3): the first socket a service manager passes


def activated_socket() -> socket.socket | None:
    """The listening TCP socket a service manager passed (systemd socket activation:
    LISTEN_PID is this process, LISTEN_FDS >= 1), or None. The variables are removed so
    children do not take the socket for theirs."""
    pid, fds = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if pid is None or fds is None:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not (pid.isdigit() and int(pid) == os.getpid() and fds.isdigit() and int(fds) >= 1):
        return None
    if int(fds) > 1:
        log.warning("the service manager passed %s sockets; the gateway takes the first", fds)
    sock = socket.socket(fileno=LISTEN_FDS_START)
    if (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()
        raise GatewayUnavailable(
            "the socket the service manager passed is not a listening TCP socket: "
            "ferry.socket needs ListenStream=127.0.0.1:PORT"
        )
    os.set_inheritable(LISTEN_FDS_START, False)
    return sock


def _check_bind(host: str, port: int, setting: str) -> None:
    """Fail with a message that names the setting, before binding fails with a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise GatewayUnavailable(
            f"cannot serve the gateway on {setting}: {e.strerror or e} "
            "(choose another with --gateway HOST:PORT, or --no-gateway)"
        ) from None


def _in_order(sizes: dict[bytes, int], cut: Sequence[Sequence[bytes]] | None) -> Schedule:
    # A NAR streams from its start: chunks are asked for in its order, not shuffled.
    return Schedule(sizes, cut=cut)
