"""The gateway's HTTP/1.1 server: h11's state machine on trio streams, running the ASGI
app (`node.gateway.app.Gateway`) for each request.

Only what a binary cache needs: GET and HEAD (other methods reach the app, which refuses
them), keep-alive, bodies sent as the app produces them (with its Content-Length, or
chunked). A response is written in one piece when the app hands over its whole body at
once, as every narinfo and small NAR is (Nix asks for thousands; hypercorn's layers cost
more than the answer). When the app fails after the status line went out, the
connection is closed short of the body, which a client takes for a failed download, never
for a complete one. A client that goes away ends its request: the app's next send raises
`ClientGone`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
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
HEAD_TIMEOUT = 30.0  # seconds a request's head may take to arrive once it started
IDLE_TIMEOUT = 120.0  # seconds a kept-alive connection may wait for its next request
RECEIVE = 64 << 10
SERVER = b"ferry"


class ClientGone(Exception):
    """The client closed the connection while its response was being sent."""


async def serve(
    app: App,
    listeners: list[trio.SocketListener],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `listeners` until cancelled; started() once they accept."""
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, _handler(app), listeners)
        task_status.started()


def _handler(app: App) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            await Connection(app, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass  # the client went away: nothing to answer
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    return handler


class Connection:
    def __init__(self, app: App, stream: trio.SocketStream) -> None:
        self.app = app
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def run(self) -> None:
        while True:
            request = await self._next_request()
            if request is None:
                return
            if not await self._respond(request):
                return  # cut short: the connection cannot carry another request
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            # The app reads no request bodies: what is left of one is skipped.
            while self.conn.their_state is h11.SEND_BODY:
                event = await self._event(HEAD_TIMEOUT)
                if event is None:
                    return
            if self.conn.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                return
            self.conn.start_next_cycle()

    async def _event(self, patience: float) -> h11.Event | None:
        """The client's next event, None at its end, on a broken request, or when it
        takes longer than `patience` seconds."""
        with trio.move_on_after(patience):
            while True:
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as e:
                    await self._error(e.error_status_hint, str(e))
                    return None
                if event is h11.NEED_DATA:
                    data = await self.stream.receive_some(RECEIVE)
                    self.conn.receive_data(data)
                    continue
                if not isinstance(event, h11.Event) or isinstance(event, h11.ConnectionClosed):
                    return None  # PAUSED, or the client closed its end
                return event
        return None  # too slow: dropped

    async def _next_request(self) -> h11.Request | None:
        event = await self._event(IDLE_TIMEOUT)
        while isinstance(event, h11.Data | h11.EndOfMessage):
            event = await self._event(HEAD_TIMEOUT)
        return event if isinstance(event, h11.Request) else None

    async def _error(self, status: int, reason: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (reason + "\n").encode("utf-8", "replace")
        try:
            await self.stream.send_all(
                self.conn.send(
                    h11.Response(
                        status_code=status,
                        headers=[
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                            (b"server", SERVER),
                        ],
                    )
                )
                + self.conn.send(h11.Data(data=body))
                + self.conn.send(h11.EndOfMessage())
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    async def _respond(self, request: h11.Request) -> bool:
        """Run the app for `request`; False if the response was cut short."""
        target = request.target
        path, _, query = target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii", "replace"),
            "scheme": "http",
            "path": path.decode("latin-1"),
            "raw_path": path,
            "query_string": query,
            "headers": [(k.lower(), v) for k, v in request.headers],
        }
        response = Response(self)
        try:
            await self.app(scope, _no_body, response.send)
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        except Exception:
            if response.started:
                # The status line is out: a short body is the one honest answer left.
                log.warning(
                    "response to %s %s cut short", scope["method"], scope["path"], exc_info=True
                )
                return False
            log.exception("%s %s failed", scope["method"], scope["path"])
            await self._error(500, "internal error (see the node's log)")
            return False
        if not response.ended:
            log.error(
                "%s %s: the app ended without finishing its response",
                scope["method"],
                scope["path"],
            )
            if not response.started:
                await self._error(500, "internal error (see the node's log)")
            return False
        return True


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class Response:
    """The ASGI `send` of one request."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.head: h11.Response | None = None
        self.started = False  # the status line went out
        self.ended = False

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.connection.conn
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])]
            headers.append((b"server", SERVER))
            self.head = h11.Response(status_code=message["status"], headers=headers)
            return
        if message["type"] != "http.response.body" or self.head is None or self.ended:
            raise RuntimeError(f"unexpected ASGI message {message['type']}")
        out = b""
        if not self.started:
            out = conn.send(self.head)
            self.started = True
        body = message.get("body", b"")
        if body:
            out += conn.send(h11.Data(data=body))
        if not message.get("more_body", False):
            out += conn.send(h11.EndOfMessage())
            self.ended = True
        if out:
            try:
                await self.connection.stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientGone() from None
