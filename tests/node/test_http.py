"""The gateway's HTTP server (`node.gateway.http`) on real loopback sockets: keep-alive,
HEAD, a response cut short when the app fails after its status line, a 500 when it
fails before, a 400 for a broken request, and a client that leaves ends its request."""

from __future__ import annotations

from typing import Any

import trio

from node.gateway import http

Scope = dict[str, Any]


class App:
    def __init__(self) -> None:
        self.gone = trio.Event()  # a send raised ClientGone

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/fail-before":
            raise RuntimeError("before the status line")
        body = b"x" * 1000
        length = [] if path == "/endless" else [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        if path == "/fail-after":
            await send({"type": "http.response.body", "body": body[:10], "more_body": True})
            raise RuntimeError("after the status line")
        if path == "/endless":
            try:
                while True:
                    await send(
                        {"type": "http.response.body", "body": b"y" * 65536, "more_body": True}
                    )
            except http.ClientGone:
                self.gone.set()
                raise
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


async def _server(nursery: trio.Nursery, app: App) -> int:
    listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    await nursery.start(http.serve, app, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def _read_all(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (then closed here too)."""
    out = b""
    async with stream:
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                out += data
    return out


async def test_keep_alive_and_head() -> None:
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        got = await _read_all(stream)
        # Three answers on one connection; the HEAD's says 1000 bytes and sends none.
        assert got.count(b"HTTP/1.1 200 ") == 3
        assert got.count(b"content-length: 1000") == 3
        assert got.count(b"x" * 1000) == 2 and len(got) < 3 * 1000 + 600
        nursery.cancel_scope.cancel()


async def test_a_failure_after_the_status_line_cuts_the_body_short() -> None:
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /fail-after HTTP/1.1\r\nHost: x\r\n\r\n")
        got = await _read_all(stream)  # closed, not kept alive
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 1000" in head
        assert body == b"x" * 10  # short of Content-Length: a failed download
        nursery.cancel_scope.cancel()


async def test_a_failure_before_the_status_line_is_a_500_and_a_broken_request_a_400() -> None:
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /fail-before HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 500 ")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 400 ")
        nursery.cancel_scope.cancel()


async def test_a_client_that_leaves_ends_its_request() -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, app)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.receive_some(65536)
        await stream.aclose()
        with trio.fail_after(10):
            await app.gone.wait()  # the app's send raised: it stops producing
        nursery.cancel_scope.cancel()
