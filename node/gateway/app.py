"""The binary-cache endpoint as an ASGI app (served by hypercorn on trio).

    GET /nix-cache-info            StoreDir, WantMassQuery, Priority
    GET /<hash>.narinfo            only for paths the quorum policy trusts; else 404 with
                                   the reason in X-Ferry-Reason (and the node's log)
    GET /nar/<narhash>.nar[.zst]   the NAR rebuilt from chunks; Range for .nar
    GET /metrics                   Prometheus text
HEAD works on each. A NAR's status line is sent only once every chunk is in the store
and verified, so a chunk no peer can supply is a 503 (Nix then tries its next
substituter), never a truncated 200; the NarHash is checked again while streaming and
the last bytes are held back until it matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio
import zstandard

from node.exchange.fetch import FetchError, FetchRefused, NoClaims, NoPolicy, Plan
from node.gateway import ranges
from node.gateway.metrics import CONTENT_TYPE as METRICS_TYPE
from node.gateway.metrics import Metrics
from store.export import ChunkRef, ChunkSource, ExportError, nar_layout, read_ref
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
PIECE = 1 << 20  # bytes read from the store per thread hop
REMEMBERED = 4096  # narinfo answers kept to map a NAR URL back to its path


class Backend(Protocol):
    """What the gateway needs of the node."""

    async def plan(self, hash_part: str) -> Plan:
        """The trusted plan for a path hash (local, else from peers, within a deadline).
        Raises NoClaims, FetchRefused, FetchError or NoPolicy."""
        ...

    async def plan_for_nar(self, nar_hash: Hash) -> Plan | None:
        """A stored path with this NarHash, re-decided by the policy, if there is one."""
        ...

    async def complete(self, plan: Plan) -> None:
        """Fetch whatever chunks the planned path lacks into the store (FetchError if some
        cannot be had)."""
        ...

    def chunk_source(self) -> tuple[ChunkSource, trio.CapacityLimiter]:
        """A reader of verified chunks and the limiter its threads must hold."""
        ...

    def sign(self, fingerprint: str) -> NixSignature: ...


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

    async def _narinfo(self, hash_part: str, send: Send, head: bool) -> None:
        try:
            plan = await self.backend.plan(hash_part)
        except NoClaims as e:
            self.metrics.narinfo.labels("miss", "no-claims").inc()
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
        self.metrics.narinfo.labels("hit", "").inc()
        self._remember(plan)
        await _respond(
            send,
            200,
            self.narinfo(plan).encode().encode(),
            head,
            content_type=b"text/x-nix-narinfo",
        )

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
        if not plan.complete:
            try:
                await self.backend.complete(plan)
            except FetchError as e:
                self.metrics.nar_failures.labels("unavailable").inc()
                log.warning("NAR of %s unavailable: %s", plan.store_path, e)
                await _respond(send, 503, b"", head, reason=str(e).split("\n")[0])
                return
            plan = Plan(plan.store_path, plan.manifest, plan.verdict, True)
            self._plans[nar_hash32] = plan
        headers = [(b"accept-ranges", b"bytes" if not zst else b"none")]
        if zst:
            headers.append((b"content-type", b"application/zstd"))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if not head:
                await self._stream(plan, None, send, compress=True)
            else:
                await send({"type": "http.response.body", "body": b""})
            return
        status = 206 if want else 200
        length = want.length if want else size
        headers += [
            (b"content-type", b"application/x-nix-nar"),
            (b"content-length", str(length).encode()),
        ]
        if want:
            headers.append((b"content-range", want.content_range(size).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(plan, want, send, compress=False)

    async def _stream(
        self, plan: Plan, want: ranges.ByteRange | None, send: Send, *, compress: bool
    ) -> None:
        source, limiter = self.backend.chunk_source()
        reader = NarReader(plan.manifest, source, want, compress=compress)
        while True:
            try:
                piece = await trio.to_thread.run_sync(reader.next_piece, limiter=limiter)
            except (ExportError, NarMismatch) as e:
                # The status line is out: the one honest thing left is to cut the
                # connection, so Nix sees a short body rather than a complete wrong one.
                self.metrics.nar_failures.labels("store").inc()
                log.error("NAR of %s cut short: %s", plan.store_path, e)
                raise
            if piece is None:
                break
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            self.metrics.served_bytes.inc(len(piece))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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
        self._offset = 0
        self._held: bytes | None = None
        self._sha = hashlib.sha256() if want is None else None
        self._zstd = zstandard.ZstdCompressor(level=3).compressobj() if compress else None
        self._done = False

    def next_piece(self) -> bytes | None:
        while not self._done:
            piece = self._gather()
            if piece is None:
                self._done = True
                last = self._finish()
                return last or None
            if self._zstd is not None:
                piece = self._zstd.compress(piece)
                if not piece:
                    continue
            if self._held is None:
                self._held = piece
                continue
            out, self._held = self._held, piece
            return out
        return None

    def _gather(self) -> bytes | None:
        """The next PIECE-ish bytes of the wanted span, or None at its end."""
        parts: list[bytes | memoryview] = []
        size = 0
        while size < PIECE and self._offset < self.end:
            item = next(self._layout, None)
            if item is None:
                break
            n = item.length if isinstance(item, ChunkRef) else len(item)
            lo, hi = self._offset, self._offset + n
            self._offset = hi
            if hi <= self.start or not n:
                continue
            data = read_ref(item, self.source, verify=False) if isinstance(item, ChunkRef) else item
            if self._sha is not None:
                self._sha.update(data)
            part = memoryview(data)[max(0, self.start - lo) : min(n, self.end - lo)]
            parts.append(part)
            size += len(part)
        if not parts:
            return None
        return b"".join(parts)

    def _finish(self) -> bytes:
        if self._sha is not None:
            got = Hash.sha256(self._sha.digest())
            if self._offset != self.manifest.nar_size or got != self.manifest.nar_hash:
                raise NarMismatch(
                    f"NAR of {self.manifest.store_path} rebuilt from the store has {got}, "
                    f"not {self.manifest.nar_hash}: run `ferry verify`"
                )
        out = self._held or b""
        self._held = None
        if self._zstd is not None:
            out += self._zstd.flush()
        return out


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
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
