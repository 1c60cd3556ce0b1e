"""The gateway's HTTP/1.1 server: requests parsed by llhttp (httptools) behind a small
sans-io reader (`RequestReader`: bytes in, requests out), responses framed here, the
ASGI app (`node.gateway.app.Gateway`) run on trio streams for each request.

Only what a binary cache needs: GET and HEAD (other methods reach the app, which refuses
them), keep-alive and pipelining, bodies sent as the app produces them (with its
Content-Length, else chunked, or to the connection's end for HTTP/1.0). A response is
written in one piece when the app hands over its whole body at once, as every narinfo
and small NAR is: Nix asks for thousands, 25 at a time, and each costs tens of
microseconds here (h11 cost ten times that, hypercorn more). When the app fails after
the status line went out, the connection is closed short of the body, which a client
takes for a failed download, never for a complete one. A client that goes away ends its
request: the app's next send raises `ClientGone`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools
import trio

log = logging.getLogger(__name__)

App = Callable[
    [
        dict[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

MAX_HEAD = 16 << 10  # bytes of request line and headers
HEAD_TIMEOUT = 30.0  # seconds a request may take to arrive once it started
IDLE_TIMEOUT = 120.0  # seconds a kept-alive connection may wait for its next request
# Seconds a response may wait for the client to take more of it. A client that stops
# reading (gone without a word, or holding the connection on purpose) would otherwise
# keep its response, and the fetch feeding it, for ever.
SEND_STALL = 60.0
RECEIVE = 64 << 10
SERVER = b"ferry"


class ClientGone(Exception):
    """The client closed the connection while its response was being sent."""


@dataclass(frozen=True)
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lowercased
    http_version: str  # "1.1" or "1.0"
    keep_alive: bool  # the connection may carry another request after this one


@dataclass(frozen=True)
class BrokenRequest:
    """The client sent something that is not HTTP/1.x: answer `status` and close."""

    status: int
    reason: str


class _HeadTooLong(Exception):
    """Raised in a parser callback to stop reading a head past `max_head`."""


class RequestReader:
    """Bytes from the client in, `Request`s (at the end of each head) out; a request's
    body is read and dropped (a binary cache takes none). Pure: no I/O, no clock."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self.max_head = max_head
        self._parser = httptools.HttpRequestParser(self)
        self._out: list[Request | BrokenRequest] = []
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head = 0  # bytes of the current head so far
        self.busy = False  # a request has begun and has not ended
        self.closed = False  # nothing more is read: the last event ends the connection

    def feed(self, data: bytes) -> list[Request | BrokenRequest]:
        """The requests `data` completes, in order; a BrokenRequest is always last."""
        if self.closed:
            return []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A protocol switch we do not offer: answer what came, then close.
            self.closed = True
        except httptools.HttpParserError as e:
            self.closed = True
            last = self._out[-1] if self._out else None
            if self._head > self.max_head:
                # Stopped by on_url or on_header (below), before any later request was
                # read: the requests before it are answered, then this refusal.
                self._out.append(
                    BrokenRequest(431, f"request head longer than {self.max_head} bytes")
                )
            elif not (isinstance(last, Request) and not last.keep_alive):
                # Bytes after a request that ends the connection are not an error to report.
                self._out.append(BrokenRequest(400, f"broken request: {e}"))
        out, self._out = self._out, []
        return out

    # llhttp's callbacks; raising one stops the parser where it is (feed sees why)

    def on_message_begin(self) -> None:
        self.busy = True
        self._url = b""
        self._headers = []
        self._head = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head += len(url)
        if self._head > self.max_head:
            raise _HeadTooLong

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head += len(name) + len(value) + 4
        if self._head > self.max_head:
            raise _HeadTooLong
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        self._out.append(
            Request(
                p.get_method(),
                self._url,
                self._headers,
                p.get_http_version(),
                p.should_keep_alive(),
            )
        )

    def on_message_complete(self) -> None:
        self.busy = False


_NO_BODY_STATUS = frozenset({204, 304})

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body
# What the app can answer without waiting (a miss known from memory, a hit it holds):
# called with the method and path; None sends the request through the app.
Quick = Callable[[str, str], Reply | None]


_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}


def encode_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A response's status line and headers (HTTP/1.1); ValueError for a header that
    would split the response (CR or LF in it)."""
    fields = b"".join([b"%s: %s\r\n" % field for field in headers])
    if fields.count(b"\n") != len(headers) or fields.count(b"\r") != len(headers):
        raise ValueError(f"a header holds a line break: {fields!r}")
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, _REASONS.get(status, b""), fields)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(
    app: App,
    listeners: list[trio.SocketListener],
    *,
    quick: Quick | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `listeners` until cancelled; started() once they accept. `quick`
    answers what it can without the app (and without a trip through trio's scheduler)."""
    waiting: set[Connection] = set()

    async def handler(sock: socket.socket) -> None:
        connection = Connection(app, sock, quick, waiting)
        try:
            await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass  # the client went away: nothing to answer
        finally:
            waiting.discard(connection)
            with trio.CancelScope(shield=True):
                await connection.stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reap, waiting)
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler, nursery)
        task_status.started()


async def _reap(waiting: set[Connection]) -> None:
    """Drop connections whose client is too slow. One task for all of them: a deadline per
    request cost more than the request (Nix sends thousands)."""
    while True:
        await trio.sleep(REAP_EVERY)
        now = trio.current_time()
        for connection in list(waiting):
            if connection.deadline <= now:
                connection.scope.cancel()


async def _accept(
    listener: trio.SocketListener,
    handler: Callable[[socket.socket], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Accept every waiting client at once. trio's accept takes one per scheduler round;
    when Nix opened its 25 connections, the last waited behind every other request 25
    times over (100 ms where a request takes 5)."""
    # A second descriptor of the same listening socket, for accept(2) without a checkpoint.
    sock = socket.socket(fileno=os.dup(listener.socket.fileno()))
    try:
        sock.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(sock.fileno())
            for _ in range(ACCEPT_BURST):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in _ACCEPT_LATER:
                        # Out of descriptors or memory: those we serve finish first.
                        log.warning("gateway: cannot accept a connection now: %s", e)
                        await trio.sleep(0.1)
                        break
                    if e.errno in _ACCEPT_GONE:
                        continue
                    raise
                nursery.start_soon(handler, conn)
    finally:
        sock.close()
        with trio.CancelScope(shield=True):
            await listener.aclose()  # as trio.serve_listeners does: served, then closed


ACCEPT_BURST = 64  # connections accepted before others get a turn
REAP_EVERY = 1.0  # seconds between looks for clients past their deadline
_ACCEPT_LATER = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class Connection:
    def __init__(
        self, app: App, sock: socket.socket, quick: Quick | None, waiting: set[Connection]
    ) -> None:
        self.app = app
        self.sock = sock  # the same socket as the stream's, for sends without a checkpoint
        self.fd = sock.fileno()
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.quick = quick
        self.waiting = waiting  # connections waiting on their client (see _reap)
        self.reader = RequestReader()
        self.scope = trio.CancelScope()
        self.deadline = math.inf  # when the client has waited too long (while waiting)

    async def run(self) -> None:
        with self.scope:
            while True:
                events = await self._receive()
                if events is None:
                    return
                for event in events:
                    if isinstance(event, BrokenRequest):
                        await self._error(event.status, event.reason)
                        return
                    if not await self._respond(event) or not event.keep_alive:
                        return

    async def _receive(self) -> list[Request | BrokenRequest] | None:
        """The next requests; None at the client's end. A started request must arrive
        within HEAD_TIMEOUT, the next within IDLE_TIMEOUT (else _reap ends the connection)."""
        self.deadline = trio.current_time() + (HEAD_TIMEOUT if self.reader.busy else IDLE_TIMEOUT)
        self.waiting.add(self)
        try:
            while not self.reader.closed:
                # Waiting first, even when bytes are there: the one checkpoint a request
                # passes, which keeps a client that pipelines from starving the others.
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    data = self.sock.recv(RECEIVE)
                except BlockingIOError:
                    continue
                except OSError:
                    return None  # reset by the client
                if not data:
                    return None  # the client closed its end
                if not self.reader.busy:
                    self.deadline = trio.current_time() + HEAD_TIMEOUT
                events = self.reader.feed(data)
                if events:
                    return events
            return None
        finally:
            self.waiting.discard(self)

    def _send_now(self, data: bytes | memoryview) -> int:
        """Send what the socket takes at once; how much that was."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            raise ClientGone() from None

    async def send(self, data: bytes) -> None:
        """All of `data`, or ClientGone (the client left, or took nothing for SEND_STALL)."""
        sent = self._send_now(data)
        rest = memoryview(data)[sent:]
        while rest:
            # The socket's buffer is full: the client is slow. Only here is a deadline
            # paid for (most answers fit the buffer and never wait).
            with trio.move_on_after(SEND_STALL) as stalled:
                await trio.lowlevel.wait_writable(self.sock.fileno())
            if stalled.cancelled_caught:
                log.info("a client took nothing for %.0f s: its response is dropped", SEND_STALL)
                raise ClientGone()
            rest = rest[self._send_now(rest) :]

    async def _error(self, status: int, reason: str) -> None:
        body = (reason + "\n").encode("utf-8", "replace")
        try:
            await self.send(
                encode_head(
                    status,
                    [
                        (b"content-type", b"text/plain"),
                        (b"content-length", b"%d" % len(body)),
                        (b"connection", b"close"),
                        (b"server", SERVER),
                    ],
                )
                + body
            )
        except ClientGone:
            pass

    async def _respond(self, request: Request) -> bool:
        """Answer `request`; False if the connection cannot carry another."""
        path, _, query = request.target.partition(b"?")
        method = request.method.decode("ascii", "replace")
        spath = path.decode("latin-1")
        if self.quick is not None:
            reply = self.quick(method, spath)
            if reply is not None:
                response = Response(self, request)
                response.start(*reply[:2])
                out = response.encode(reply[2], more=False)
                await self.send(out)
                response.check_ended()
                return response.reusable
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": request.http_version,
            "method": method,
            "scheme": "http",
            "path": spath,
            "raw_path": path,
            "query_string": query,
            "headers": request.headers,
        }
        response = Response(self, request)
        try:
            await self.app(scope, _no_body, response.send)
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        except Exception:
            if response.started:
                # The status line is out: a short body is the one honest answer left.
                log.warning("response to %s %s cut short", method, spath, exc_info=True)
                return False
            log.exception("%s %s failed", method, spath)
            await self._error(500, "internal error (see the node's log)")
            return False
        if not response.ended:
            log.error("%s %s: the app ended without finishing its response", method, spath)
            if not response.started:
                await self._error(500, "internal error (see the node's log)")
            return False
        return response.reusable


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class Response:
    """One request's response: frames the body (its Content-Length, else chunked, else
    to the connection's end) and holds the app to its Content-Length. `send` is the
    app's ASGI send."""

    def __init__(self, connection: Connection, request: Request) -> None:
        self.connection = connection
        self.request = request
        self.head: bytes | None = None
        self.started = False  # the status line went out
        self.ended = False
        self.reusable = request.keep_alive  # another request may follow on the connection
        self.body = True  # the response has a body on the wire
        self.chunked = False
        self.remaining: int | None = None  # Content-Length not yet sent

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start(message["status"], list(message.get("headers", [])))
            return
        if message["type"] != "http.response.body" or self.head is None or self.ended:
            raise RuntimeError(f"unexpected ASGI message {message['type']}")
        out = self.encode(message.get("body", b""), message.get("more_body", False))
        if out:
            await self.connection.send(out)
        self.check_ended()

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        length: bytes | None = None
        close = False
        for k, v in headers:
            k = k.lower()
            if k == b"content-length":
                length = v
            elif k == b"connection" and v.lower() == b"close":
                close = True
        if self.request.method == b"HEAD" or status in _NO_BODY_STATUS or status < 200:
            self.body = False
        elif length is not None:
            self.remaining = int(length)
        elif self.request.http_version == "1.1":
            self.chunked = True
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            self.reusable = False  # HTTP/1.0: the body ends with the connection
        if close:
            self.reusable = False
        elif not self.reusable:
            headers.append((b"connection", b"close"))
        elif self.request.http_version == "1.0":
            headers.append((b"connection", b"keep-alive"))
        headers.append((b"server", SERVER))
        self.head = encode_head(status, headers)

    def encode(self, body: bytes, more: bool) -> bytes:
        """The bytes that carry `body` (after the head, the first time); the last piece
        when not `more`."""
        assert self.head is not None
        out = b""
        if not self.started:
            out = self.head
            self.started = True
        if body and self.body:
            if self.remaining is not None:
                if len(body) > self.remaining:
                    raise RuntimeError("the app sent more than its Content-Length")
                self.remaining -= len(body)
            out += _chunk(body) if self.chunked else body
        if not more:
            self.ended = True
            if self.chunked:
                out += b"0\r\n\r\n"
            if self.remaining:
                # Short of Content-Length: the client must not take it for complete.
                self.reusable = False
        return out

    def check_ended(self) -> None:
        if self.ended and self.remaining:
            raise RuntimeError("the app ended its body short of its Content-Length")
