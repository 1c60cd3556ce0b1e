"""The control socket: how the commands that drive a running node (`ferry fetch`,
`publish`, `mount`, `umount`, `mounts`, `peers`, `status`) talk to it. A unix socket in
the data directory, mode 0600 (only the node's user may drive it). One request per
connection, each frame a msgpack map (the messages are in api.py):

    client: {"op": ..., ...the request's fields}
    node:   {"progress": api.PROGRESS[request]}*  then  {"ok": reply}  or  {"error": message, "code": int}
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

from node.daemon import api
from node.local.datadir import CONTROL_SOCKET
from p2p.frame import FrameDecoder, FrameError
from p2p.frame import encode as frame

log = logging.getLogger(__name__)

SOCKET = CONTROL_SOCKET
CAP = 16 << 20
MAX_UNIX_PATH = 107

OnProgress = Callable[[Any], Awaitable[None]]  # the request's api.PROGRESS type
Handler = Callable[[api.Request, OnProgress], Awaitable[api.Reply]]
Failure = api.Failure


class ControlError(Exception):
    """The node refused a request or is not reachable; the message says what to do."""

    def __init__(self, message: str, failure: api.Failure = api.Failure.FAILED) -> None:
        super().__init__(message)
        self.failure = failure


def socket_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), SOCKET)


def _check_length(path: str) -> None:
    if len(path.encode()) > MAX_UNIX_PATH:
        raise ControlError(
            f"{path}: the data directory's path is too long for a unix socket "
            f"(at most {MAX_UNIX_PATH} bytes); choose a shorter --data-dir"
        )


async def bind(data_dir: str) -> trio.SocketListener:
    path = socket_path(data_dir)
    _check_length(path)
    if os.path.exists(path):
        if await _answers(path):
            raise ControlError(f"{path}: another node is already running on this data directory")
        os.unlink(path)  # left by a node that died
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is created 0600: nobody else may ever connect
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)


async def _answers(path: str) -> bool:
    try:
        s = await trio.open_unix_socket(path)
    except OSError:
        return False
    await s.aclose()
    return True


async def serve(
    listener: trio.SocketListener,
    handler: Handler,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                raw = await _receive(stream, FrameDecoder(CAP), [])
            except (ControlError, trio.BrokenResourceError):
                return
            try:
                request = api.decode_request(raw)
            except api.ApiError as e:
                await _send(
                    stream,
                    {"error": f"malformed request: {e}", "failure": api.Failure.MALFORMED.value},
                )
                return

            async def progress(p: Any) -> None:
                await _send(stream, {"progress": api.encode(p)})

            try:
                reply = await handler(request, progress)
                await _send(stream, {"ok": api.encode(reply)})
            except ControlError as e:
                await _send(stream, {"error": str(e), "failure": e.failure.value})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("a control client left before its %s finished", request.OP)
            except Exception as e:
                # A bug in one request must not stop the node: log it, tell the client.
                log.exception("control request %s failed", request.OP)
                try:
                    await _send(
                        stream, {"error": f"internal error in the node: {e!r} (see the node's log)"}
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    await trio.serve_listeners(one, [listener], task_status=task_status)


async def _send(stream: trio.abc.Stream, msg: dict[str, Any]) -> None:
    await stream.send_all(frame(msgpack.packb(msg, use_bin_type=True), CAP))


async def _receive(stream: trio.abc.Stream, decoder: FrameDecoder, pending: list[bytes]) -> Any:
    """The next message; `pending` holds frames already decoded from earlier reads."""
    while not pending:
        data = await stream.receive_some(1 << 16)
        if not data:
            raise ControlError("the node closed the connection (did it stop? see its log)")
        try:
            pending.extend(decoder.feed(data))
        except FrameError as e:
            raise ControlError(f"control protocol: {e}") from None
    return msgpack.unpackb(pending.pop(0), raw=False)


async def call(
    data_dir: str,
    request: api.Request,
    on_progress: Callable[[Any], None] | None = None,
) -> Any:
    """Send one request to the node on `data_dir`; raises ControlError if it refuses or
    no node runs there."""
    path = socket_path(data_dir)
    _check_length(path)
    try:
        stream = await trio.open_unix_socket(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise ControlError(
                f"no ferry node is running on {os.path.dirname(path)} "
                "(start one with `ferry node run`, or pass its --data-dir)"
            ) from None
        if e.errno == errno.EACCES:
            raise ControlError(
                f"{path}: permission denied (the node runs as another user)"
            ) from None
        raise ControlError(f"{path}: {e.strerror}") from None
    async with stream:
        await stream.send_all(
            frame(msgpack.packb(api.encode_request(request), use_bin_type=True), CAP)
        )
        decoder = FrameDecoder(CAP)
        pending: list[bytes] = []
        while True:
            msg = await _receive(stream, decoder, pending)
            try:
                if "progress" in msg:
                    if on_progress and type(request) in api.PROGRESS:
                        on_progress(api.decode(api.PROGRESS[type(request)], msg["progress"]))
                elif "ok" in msg:
                    return api.decode(api.REPLIES[type(request)], msg["ok"])
            except api.ApiError as e:
                raise ControlError(
                    f"the node's answer does not decode ({e}): is it another version of ferry?"
                ) from None
            if "ok" not in msg and "progress" not in msg:
                try:
                    failure = api.Failure(msg.get("failure", api.Failure.FAILED))
                except ValueError:
                    failure = api.Failure.FAILED
                raise ControlError(str(msg.get("error", "the node refused the request")), failure)


def running(data_dir: str) -> bool:
    """Whether a node answers on `data_dir` (a socket left by a killed node does not)."""
    path = socket_path(data_dir)
    if len(path.encode()) > MAX_UNIX_PATH or not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
