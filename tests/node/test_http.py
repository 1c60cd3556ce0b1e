"""The gateway's HTTP server (`node.gateway.http`): its request reader fed bytes however
they arrive, and on real loopback sockets keep-alive, HEAD, pipelined quick answers in
order with the app's, a response cut short when the app fails after its status line, a
500 when it fails before, a 400 for a broken request, a client that leaves ends its
request, and one that says nothing is dropped."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

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


async def test_a_client_that_stops_reading_loses_its_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "SEND_STALL", 0.5)
    app = App()
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, app)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        # It reads nothing more and stays connected: once the socket's buffers are
        # full, the server gives the response up instead of holding it for ever.
        with trio.fail_after(20):
            await app.gone.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()


def _requests(raw: bytes, cuts: list[int]) -> list[http.Request | http.BrokenRequest]:
    reader = http.RequestReader(max_head=512)
    out: list[http.Request | http.BrokenRequest] = []
    at = 0
    for cut in sorted(cuts) + [len(raw)]:
        out += reader.feed(raw[at:cut])
        at = cut
    return out


REQUESTS = st.lists(
    st.tuples(
        st.sampled_from([b"GET", b"HEAD", b"POST"]),
        st.from_regex(rb"\A/[a-z0-9.]{0,40}\Z"),
        st.lists(st.tuples(st.from_regex(rb"\A[a-z]{1,12}\Z"), st.from_regex(rb"\A[ -~]{0,30}\Z"))),
        st.binary(max_size=20),
    ),
    min_size=1,
    max_size=5,
)


@given(REQUESTS, st.data())
def test_requests_read_the_same_however_the_bytes_arrive(reqs: list, data: st.DataObject) -> None:
    raw = b"".join(
        b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s"
        % (m, t, b"".join(b"x-%s: %s\r\n" % (k, v.strip()) for k, v in hs), len(body), body)
        for m, t, hs, body in reqs
    )
    whole = _requests(raw, [])
    # Each request up to the first whose head is too long, which ends the connection.
    heads = [
        len(t)
        + sum(len(b"x-" + k) + len(v.strip()) + 4 for k, v in hs)
        + len(b"content-length")
        + 4
        + len(str(len(body)))
        for _, t, hs, body in reqs
    ]
    fits = next((i for i, h in enumerate(heads) if h > 512), len(reqs))
    assert [(r.method, r.target) for r in whole if isinstance(r, http.Request)] == [
        (m, t) for m, t, *_ in reqs[:fits]
    ]
    if fits < len(reqs):
        assert whole[-1] == http.BrokenRequest(431, "request head longer than 512 bytes")
    assert all(
        r.keep_alive and r.http_version == "1.1" for r in whole if isinstance(r, http.Request)
    )
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    assert _requests(raw, cuts) == whole


@given(st.binary(max_size=200))
def test_junk_is_a_broken_request_never_an_exception(junk: bytes) -> None:
    out = _requests(junk + b"\r\n\r\n", [])
    assert all(isinstance(r, http.Request) for r in out[:-1])


def test_a_head_too_long_is_refused() -> None:
    out = _requests(b"GET / HTTP/1.1\r\nx: " + b"a" * 600 + b"\r\n\r\n", [5, 300])
    assert out == [http.BrokenRequest(431, "request head longer than 512 bytes")]
    out = _requests(b"GET / HTTP/1.0\r\n\r\n", [])
    assert len(out) == 1 and isinstance(out[0], http.Request) and not out[0].keep_alive
    # Pipelined: the request after the long one is not read (its answer would be taken
    # for the long one's).
    small = b"GET /a HTTP/1.1\r\n\r\n"
    out = _requests(small + b"GET /b HTTP/1.1\r\nx: " + b"a" * 600 + b"\r\n\r\n" + small, [])
    assert [type(r) for r in out] == [http.Request, http.BrokenRequest]
    assert out[1] == http.BrokenRequest(431, "request head longer than 512 bytes")


async def test_quick_answers_and_the_app_share_a_connection_in_order() -> None:
    def quick(method: str, path: str) -> http.Reply | None:
        if path != "/quick":
            return None
        return 404, [(b"content-length", b"5"), (b"x-ferry-reason", b"quick")], b"miss\n"

    async with trio.open_nursery() as nursery:
        listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
        await nursery.start(functools.partial(http.serve, App(), listeners, quick=quick))
        port = int(listeners[0].socket.getsockname()[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /quick HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n"
            b"HEAD /quick HTTP/1.1\r\n\r\nGET /quick HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        got = await _read_all(stream)
        answers = got.split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"404", b"200", b"404", b"404"]
        assert answers[0].endswith(b"\r\n\r\nmiss\n") and answers[2].endswith(b"\r\n\r\n")
        assert b"connection: close" in answers[3] and got.endswith(b"miss\n")
        nursery.cancel_scope.cancel()


async def test_a_client_that_says_nothing_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "IDLE_TIMEOUT", 0.2)
    monkeypatch.setattr(http, "HEAD_TIMEOUT", 0.2)
    monkeypatch.setattr(http, "REAP_EVERY", 0.05)
    async with trio.open_nursery() as nursery:
        port = await _server(nursery, App())
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await idle.send_all(b"GET /a HTTP/1.1\r\n\r\n")
        half = await trio.open_tcp_stream("127.0.0.1", port)
        await half.send_all(b"GET /a HTTP/1.1\r\nHost:")  # a head that never ends
        got = await _read_all(idle)  # answered, then closed once idle too long
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"x" * 1000)
        assert await _read_all(half) == b""
        nursery.cancel_scope.cancel()
