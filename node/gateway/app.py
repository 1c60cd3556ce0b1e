"""The binary-cache endpoint as an ASGI app (served by `node.gateway.http` on trio).

    GET /nix-cache-info            StoreDir, WantMassQuery, Priority
    GET /<hash>.narinfo            only for paths the quorum policy trusts; else 404 with
                                   the reason in X-Ferry-Reason (and the node's log)
    GET /nar/<narhash>.nar[.zst]   the NAR rebuilt from chunks; Range for .nar
    GET /metrics                   Prometheus text
HEAD works on each (a NAR's HEAD fetches nothing). A NAR's bytes leave as soon as its
first chunks are here: chunks are fetched in NAR order and sent, verified, while the
rest still arrive. A chunk no peer can supply is a 503 when that is known before the
status line (Nix then tries its next substituter); after it, the connection is cut
short of Content-Length, which Nix takes for a failed download: never a complete 200 of
wrong bytes. The NarHash is checked again while streaming and the last bytes are held
back until it matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import trio
import zstandard

from node.exchange.fetch import FetchError, FetchRefused, NoClaims, NoPolicy, Plan
from node.gateway import http, ranges
from node.gateway.metrics import CONTENT_TYPE as METRICS_TYPE
from node.gateway.metrics import Metrics
from store.export import (
    ChunkMissing,
    ChunkRef,
    ChunkSource,
    ExportError,
    nar_layout,
    read_ref,
)
from store.hash import Hash, HashError
from store.manifest import Manifest
from store.narinfo import NarInfo, NixCacheInfo
from store.nix32 import ALPHABET
from trust.policy import Conflict, Insufficient
from trust.signature import NixSignature

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_NARINFO = re.compile(rf"/([{ALPHABET}]{{32}})\.narinfo")
_NAR = re.compile(rf"/nar/([{ALPHABET}]{{52}})\.nar(\.zst)?")
NARINFO_TYPE = b"text/x-nix-narinfo"
PIECE = 1 << 20  # bytes read from the store per thread hop
REMEMBERED = 4096  # narinfo answers kept to map a NAR URL back to its path
# Seconds a trusted plan answers narinfos again without asking peers (Nix itself keeps a
# hit for 30 days; short here so a conflicting claim that arrives soon still counts).
HIT_TTL = 30.0


class Backend(Protocol):
    """What the gateway needs of the node."""

    async def plan(self, hash_part: str) -> Plan:
        """The trusted plan for a path hash (local, else from peers, within a deadline).
        Raises NoClaims, FetchRefused, FetchError or NoPolicy."""
        ...

    def missing_now(self, hash_part: str) -> str | None:
        """Why no peer can have this path, if that is known now without waiting (the
        reason a NoClaims from `plan` would give); None: ask `plan`."""
        ...

    async def plan_for_nar(self, nar_hash: Hash) -> Plan | None:
        """A stored path with this NarHash, re-decided by the policy, if there is one."""
        ...

    async def complete(self, plan: Plan) -> None:
        """Fetch whatever chunks the planned path lacks into the store, in NAR order
        (FetchError if some cannot be had)."""
        ...

    def filled(self, plan: Plan) -> bool:
        """Whether the path was fetched complete since it was planned (no store read)."""
        ...

    def chunks_changed(self) -> trio.Event:
        """Set the next time chunks are added to the store."""
        ...

    def chunk_source(self) -> tuple[ChunkSource, trio.CapacityLimiter]:
        """A reader of verified chunks and the limiter its threads must hold."""
        ...

    def sign(self, fingerprint: str) -> NixSignature: ...

    def using(self, store_path: str) -> AbstractContextManager[None]:
        """Keep the path from GC and eviction (and count it as used) while in the block."""
        ...


@dataclass(frozen=True)
class GatewaySettings:
    store_dir: str = "/nix/store"
    priority: int = 30


class Gateway:
    def __init__(self, backend: Backend, settings: GatewaySettings, metrics: Metrics) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self._plans: OrderedDict[str, Plan] = OrderedDict()  # NarHash (nix32) -> plan
        self._hits: OrderedDict[str, Hit] = OrderedDict()  # path hash -> a recent answer
        self._planning: dict[str, Planning] = {}  # hash -> the request asking peers now
        # Counted on every request Nix makes: the labelled children, looked up once.
        self._count_miss = metrics.narinfo.labels("miss", "no-claims")
        self._count_hit = metrics.narinfo.labels("hit", "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"only GET and HEAD\n", head=False, extra=[(b"allow", b"GET, HEAD")]
            )
            return
        head = method == "HEAD"
        path = scope["path"]
        if path == "/nix-cache-info":
            info = NixCacheInfo(self.settings.store_dir, True, self.settings.priority)
            await _respond(
                send, 200, info.encode().encode(), head, content_type=b"text/x-nix-cache-info"
            )
        elif m := _NARINFO.fullmatch(path):
            await self._narinfo(m.group(1), send, head)
        elif m := _NAR.fullmatch(path):
            await self._nar(m.group(1), bool(m.group(2)), _header(scope, b"range"), send, head)
        elif path == "/metrics":
            await _respond(
                send, 200, self.metrics.render(), head, content_type=METRICS_TYPE.encode()
            )
        elif path == "/":
            await _respond(
                send, 200, b"ferry: a Nix binary cache backed by a peer-to-peer network\n", head
            )
        else:
            await _respond(send, 404, b"not found\n", head)

    # --- narinfo

    async def _plan(self, hash_part: str) -> Plan:
        """The backend's plan, shared: a hit is kept for HIT_TTL, and requests for a hash
        another request is planning wait for its answer (Nix asks 25 at a time)."""
        now = trio.current_time()
        hit = self._hits.get(hash_part)
        if hit is not None and hit.until > now:
            return hit.plan
        other = self._planning.get(hash_part)
        if other is not None:
            await other.done.wait()
            if other.plan is not None:
                return other.plan
            if other.error is not None:
                raise other.error
            # Its request went away before an answer: ask ourselves.
        mine = self._planning[hash_part] = Planning()
        try:
            plan = await self.backend.plan(hash_part)
        except (NoClaims, FetchError, NoPolicy) as e:
            mine.error = e
            raise
        finally:
            mine.done.set()
            if self._planning.get(hash_part) is mine:
                del self._planning[hash_part]
        mine.plan = plan
        self._keep(plan)
        return plan

    def _keep(self, plan: Plan) -> None:
        key = plan.store_path.hash_part
        self._hits[key] = Hit(plan, trio.current_time() + HIT_TTL)
        self._hits.move_to_end(key)
        while len(self._hits) > REMEMBERED:
            self._hits.popitem(last=False)

    def quick(self, method: str, path: str) -> http.Reply | None:
        """The answer to a narinfo request that is known at once: a path no peer can
        have, or one answered within HIT_TTL. None for anything else (the app answers).
        Most of what Nix asks is such a miss, 25 at a time: each costs microseconds."""
        if method not in ("GET", "HEAD") or not path.endswith(".narinfo"):
            return None
        m = _NARINFO.fullmatch(path)
        if m is None:
            return None
        hash_part = m.group(1)
        hit = self._hits.get(hash_part)
        if hit is not None and hit.until > trio.current_time():
            self._count_hit.inc()
            self._remember(hit.plan)
            return _reply(200, self._narinfo_bytes(hit), content_type=NARINFO_TYPE)
        if hash_part in self._planning:
            return None
        reason = self.backend.missing_now(hash_part)
        if reason is None:
            return None
        self._count_miss.inc()
        return _reply(404, b"", reason=reason)

    def _narinfo_bytes(self, hit: Hit) -> bytes:
        # Signed once per hit: a signature costs more than the rest of the answer.
        if hit.body is None:
            hit.body = self.narinfo(hit.plan).encode().encode()
        return hit.body

    async def _narinfo(self, hash_part: str, send: Send, head: bool) -> None:
        try:
            plan = await self._plan(hash_part)
        except NoClaims as e:
            self._count_miss.inc()
            log.debug("narinfo %s: %s", hash_part, e)
            await _respond(send, 404, b"", head, reason=str(e))
            return
        except FetchRefused as e:
            reason = _refusal(e)
            self.metrics.narinfo.labels("refused", reason).inc()
            log.info("narinfo %s refused: %s", e.store_path, str(e).replace("\n", "; "))
            await _respond(send, 404, b"", head, reason=str(e).split("\n", 1)[1].split("\n")[0])
            return
        except NoPolicy as e:
            self.metrics.narinfo.labels("refused", "no-policy").inc()
            log.info("narinfo %s refused: %s", hash_part, e)
            await _respond(send, 404, b"", head, reason=str(e))
            return
        except FetchError as e:
            self.metrics.narinfo.labels("refused", "unavailable").inc()
            log.info("narinfo %s: %s", hash_part, e)
            await _respond(send, 404, b"", head, reason=str(e))
            return
        self._count_hit.inc()
        self._remember(plan)
        hit = self._hits.get(hash_part)
        body = (
            self._narinfo_bytes(hit)
            if hit is not None and hit.plan is plan
            else self.narinfo(plan).encode().encode()
        )
        await _respond(send, 200, body, head, content_type=NARINFO_TYPE)

    def narinfo(self, plan: Plan) -> NarInfo:
        o = plan.verdict.outcome
        info = NarInfo(
            plan.store_path,
            f"nar/{o.nar_hash.nix32()}.nar",
            o.nar_hash,
            o.nar_size,
            o.references,
            compression="none",
            file_size=o.nar_size,  # what Nix shows as the download size (uncompressed here)
            deriver=plan.manifest.deriver,
        )
        sigs = [c.nix_sig().encode() for c in plan.verdict.claims]
        sigs.append(self.backend.sign(info.fingerprint()).encode())
        return dataclasses.replace(info, sigs=tuple(sigs))

    def _remember(self, plan: Plan) -> None:
        key = plan.verdict.nar_hash.nix32()
        self._plans[key] = plan
        self._plans.move_to_end(key)
        while len(self._plans) > REMEMBERED:
            self._plans.popitem(last=False)

    # --- NAR

    async def _nar(
        self, nar_hash32: str, zst: bool, range_header: str | None, send: Send, head: bool
    ) -> None:
        plan = self._plans.get(nar_hash32)
        if plan is None:
            try:
                plan = await self.backend.plan_for_nar(Hash.decode(f"sha256:{nar_hash32}"))
            except HashError:
                plan = None
        if plan is None:
            await _respond(
                send,
                404,
                b"",
                head,
                reason="no known path has this NarHash; ask for its narinfo first",
            )
            return
        size = plan.manifest.nar_size
        want: ranges.ByteRange | None = None
        if not zst:
            try:
                want = ranges.parse(range_header, size)
            except ranges.Unsatisfiable:
                await _respond(
                    send, 416, b"", head, extra=[(b"content-range", f"bytes */{size}".encode())]
                )
                return
        headers = [(b"accept-ranges", b"bytes" if not zst else b"none")]
        if zst:
            headers.append((b"content-type", b"application/zstd"))
        else:
            headers += [
                (b"content-type", b"application/x-nix-nar"),
                (b"content-length", str(want.length if want else size).encode()),
            ]
            if want:
                headers.append((b"content-range", want.content_range(size).encode()))
        start = {"type": "http.response.start", "status": 206 if want else 200, "headers": headers}
        if head:
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        # GC and eviction leave the path alone while it goes out (or comes in).
        with self.backend.using(str(plan.store_path)):
            try:
                await self._send_nar(plan, nar_hash32, want, send, start, zst)
            except http.ClientGone:
                # Nothing is read or fetched for it any more (the fetch feeding it stops
                # with it, keeping what arrived).
                log.info("NAR of %s: the client left; serving it stopped", plan.store_path)
                raise

    async def _send_nar(
        self,
        plan: Plan,
        nar_hash32: str,
        want: ranges.ByteRange | None,
        send: Send,
        start: dict[str, Any],
        zst: bool,
    ) -> None:
        if plan.complete or self.backend.filled(plan):
            await self._stream(plan, want, send, start, zst, None)
            return
        cut: Exception | None = None
        async with trio.open_nursery() as nursery:
            fetching = Fetching()
            nursery.start_soon(self._complete, plan, fetching)
            try:
                if await self._stream(plan, want, send, start, zst, fetching):
                    done = Plan(plan.store_path, plan.manifest, plan.verdict, True)
                    self._plans[nar_hash32] = done
                    if plan.store_path.hash_part in self._hits:
                        self._keep(done)
            except (NarUnavailable, ExportError, NarMismatch) as e:
                cut = e  # raised outside the nursery: the server sees what it was
                nursery.cancel_scope.cancel()
        if cut is not None:
            raise cut

    async def _complete(self, plan: Plan, fetching: Fetching) -> None:
        try:
            await self.backend.complete(plan)
        except FetchError as e:
            fetching.error = e
        finally:
            fetching.done.set()

    async def _stream(
        self,
        plan: Plan,
        want: ranges.ByteRange | None,
        send: Send,
        start: dict[str, Any],
        compress: bool,
        fetching: Fetching | None,
    ) -> bool:
        """Send the NAR's pieces as the store has them, the status line with the first
        (`fetching`: chunks still arriving). True when all went out; False when it was
        a 503. Raises, cutting the connection, when the body cannot be finished."""
        source, limiter = self.backend.chunk_source()
        reader = NarReader(plan.manifest, source, want, compress=compress)
        started = False
        while True:
            changed = self.backend.chunks_changed()
            try:
                piece = await trio.to_thread.run_sync(reader.next_piece, limiter=limiter)
            except ChunkMissing:
                if fetching is not None and (changed.is_set() or not fetching.done.is_set()):
                    # Chunks landed while it read (the fetch may even be done), or are
                    # still on their way: look again once some are here.
                    if not changed.is_set():
                        await first(changed.wait, fetching.done.wait)
                    continue
                if fetching is None or fetching.error is None:
                    self.metrics.nar_failures.labels("store").inc()
                    log.error(
                        "NAR of %s cut short: a chunk is missing from the store", plan.store_path
                    )
                    raise
                e: Exception = fetching.error
                self.metrics.nar_failures.labels("unavailable").inc()
                if not started:
                    log.warning("NAR of %s unavailable: %s", plan.store_path, e)
                    await _respond(send, 503, b"", False, reason=str(e).split("\n")[0])
                    return False
                log.warning("NAR of %s cut short: %s", plan.store_path, e)
                raise NarUnavailable(str(e)) from None
            except (ExportError, NarMismatch) as e:
                # The status line is out: the one honest thing left is to cut the
                # connection, so Nix sees a short body rather than a complete wrong one.
                self.metrics.nar_failures.labels("store").inc()
                log.error("NAR of %s cut short: %s", plan.store_path, e)
                raise
            if not started:
                await send(start)
                started = True
            if piece is None:
                break
            # The last piece ends the body at once (a small NAR is one piece: one write,
            # no second trip to the reader's thread).
            last = reader.finished
            await send({"type": "http.response.body", "body": piece, "more_body": not last})
            self.metrics.served_bytes.inc(len(piece))
            if last:
                return True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


@dataclass
class Hit:
    """A narinfo answered recently: answered again without asking peers until `until`."""

    plan: Plan
    until: float
    body: bytes | None = None  # the signed narinfo, once made


class Planning:
    """A narinfo's plan being made, which requests for the same hash wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.plan: Plan | None = None
        self.error: Exception | None = None


class Fetching:
    """A NAR's fetch running beside its stream."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: FetchError | None = None


class NarUnavailable(Exception):
    """A chunk could not be had after the status line went out."""


async def first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return when the first of `waits` does."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for w in waits:
            nursery.start_soon(one, w)


class NarReader:
    """Produces a NAR (or a byte range of it) from the store in pieces of about PIECE
    bytes, on a worker thread. Chunks are read verified. A whole NAR is hashed as it
    goes and its last piece is withheld until the NarHash matches: a mismatch raises,
    and the client sees a cut connection, not a complete body."""

    def __init__(
        self,
        manifest: Manifest,
        source: ChunkSource,
        want: ranges.ByteRange | None,
        *,
        compress: bool,
    ) -> None:
        self.manifest = manifest
        self.source = source
        self.start, self.end = (want.start, want.end + 1) if want else (0, manifest.nar_size)
        self._layout = nar_layout(manifest)
        self._item: ChunkRef | bytes | memoryview | None = None  # the layout's item being read
        self._parts: list[bytes | memoryview] = []  # of the piece being gathered
        self._size = 0
        self._offset = 0
        self._sha = hashlib.sha256() if want is None else None
        self._zstd = zstandard.ZstdCompressor(level=3).compressobj() if compress else None
        self._done = False

    @property
    def finished(self) -> bool:
        """The last piece has been returned."""
        return self._done

    def next_piece(self) -> bytes | None:
        while not self._done:
            piece = self._gather()
            if piece is not None and self._offset < self.end:
                if self._zstd is not None:
                    piece = self._zstd.compress(piece)
                    if not piece:
                        continue
                return piece
            # The last piece: it goes only once the whole NAR hashed right.
            self._done = True
            self._check()
            last = piece or b""
            if self._zstd is not None:
                last = self._zstd.compress(last) + self._zstd.flush()
            return last or None
        return None

    def _gather(self) -> bytes | None:
        """The next PIECE-ish bytes of the wanted span, or None at its end. A chunk the
        store lacks raises ChunkMissing and leaves the reader where it was: called again
        once the chunk is here, it carries on."""
        while self._size < PIECE and self._offset < self.end:
            if self._item is None:
                self._item = next(self._layout, None)
                if self._item is None:
                    break
            item = self._item
            n = item.length if isinstance(item, ChunkRef) else len(item)
            lo, hi = self._offset, self._offset + n
            if hi > self.start and n:
                data = (
                    read_ref(item, self.source, verify=False)
                    if isinstance(item, ChunkRef)
                    else item
                )
                if self._sha is not None:
                    self._sha.update(data)
                part = memoryview(data)[max(0, self.start - lo) : min(n, self.end - lo)]
                self._parts.append(part)
                self._size += len(part)
            self._offset = hi
            self._item = None
        if not self._parts:
            return None
        out = b"".join(self._parts)
        self._parts, self._size = [], 0
        return out

    def _check(self) -> None:
        if self._sha is not None:
            got = Hash.sha256(self._sha.digest())
            if self._offset != self.manifest.nar_size or got != self.manifest.nar_hash:
                raise NarMismatch(
                    f"NAR of {self.manifest.store_path} rebuilt from the store has {got}, "
                    f"not {self.manifest.nar_hash}: run `ferry verify`"
                )


class NarMismatch(Exception):
    pass


def _refusal(e: FetchRefused) -> str:
    if isinstance(e.verdict, Insufficient):
        return "insufficient"
    if isinstance(e.verdict, Conflict):
        return "conflict"
    return "untrusted"


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    head: bool,
    *,
    content_type: bytes = b"text/plain",
    reason: str | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    status, headers, body = _reply(
        status, body, content_type=content_type, reason=reason, extra=extra
    )
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _reply(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain",
    reason: str | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> http.Reply:
    """A whole answer: status, headers (a reason also in X-Ferry-Reason), body."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    if reason is not None:
        # A header is one line of latin-1: keep the first line, replace what cannot go.
        headers.append((b"x-ferry-reason", reason.split("\n")[0].encode("latin-1", "replace")))
        if not body:
            body = (reason + "\n").encode()
            headers[1] = (b"content-length", str(len(body)).encode())
    return status, headers, body


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
