"""The thin trio side of the sans-io codecs: bytes in and out of a libp2p stream."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Protocol

import trio

from p2p import frame

READ = 1 << 20
# `write_paced` measures progress in pieces this size: what one noise message carries
# (65,535 bytes less its 16-byte tag) less a yamux header, so a piece costs one message.
PIECE = 65535 - 16 - 12
WINDOW_SHUT = "Timed out waiting for window update"  # py-libp2p's words for a reader that stopped
# Bytes a connection's socket holds unsent, at most, before a write waits (`p2p.host`
# sets TCP_NOTSENT_LOWAT). The kernel otherwise takes up to 4 MB (tcp_wmem), which a home
# uplink needs seconds to carry: a server would compress whole replies at the level meant
# for an unmeasured link, and think a slow link fast because its writes returned at once.
# Bounded, a write takes as long as the link needs beyond this much, and the link is
# measured from the first reply; a fast link stays full (the kernel wakes the writer below
# this mark).
UNSENT_BYTES = 256 << 10


class ByteStream(Protocol):
    """What ferry needs of a stream: libp2p's `INetStream` and the simulator's links."""

    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...


class StreamGone(ConnectionError):
    """The peer closed or reset the stream, or the connection died."""


class ReaderStalled(Exception):
    """The peer took no piece of what we wrote for too long; the stream is half-written
    and must be reset."""


@functools.cache
def _stream_errors() -> tuple[type[Exception], type[Exception]]:
    """py-libp2p's end-of-stream and stream-failure exceptions. Imported on first use:
    importing anything of libp2p loads all of it (a second of CPU), which commands that
    never touch the network (`ferry publish`, `ferry store`) should not pay."""
    from libp2p.network.stream.exceptions import StreamEOF, StreamError

    return StreamEOF, StreamError


async def read_some(stream: ByteStream) -> bytes:
    """The next bytes the peer sent; b"" at a clean end of stream."""
    eof, error = _stream_errors()
    try:
        return await stream.read(READ)
    except eof:
        return b""
    except error as e:
        raise StreamGone(str(e) or type(e).__name__) from None


async def read_frame(stream: ByteStream, cap: int) -> bytes:
    """The payload of the one frame (p2p.frame) a request-and-answer protocol sends."""
    decoder = frame.FrameDecoder(cap)
    while True:
        data = await read_some(stream)
        if not data:
            raise StreamGone("closed before a whole message")
        for payload in decoder.feed(data):
            return payload


async def write(stream: ByteStream, data: bytes) -> None:
    if not data:
        return
    _, error = _stream_errors()
    try:
        await stream.write(data)
    except error as e:
        # py-libp2p resets a stream whose window stayed shut for 5 s; the cause says so.
        cause = f" ({e.__cause__})" if e.__cause__ is not None else ""
        raise StreamGone((str(e) or type(e).__name__) + cause) from None


async def abort(stream: ByteStream) -> None:
    """Reset a stream whose peer broke the protocol; never raises."""
    try:
        await stream.reset()
    except Exception:  # noqa: BLE001 - the connection may already be gone: nothing left to do
        pass


async def finish(stream: ByteStream) -> None:
    """Close a stream whose exchange is over; never raises (the peer may be gone)."""
    try:
        await stream.close()
    except Exception:  # noqa: BLE001 - already gone: nothing to release
        pass


async def write_paced(
    stream: ByteStream,
    data: bytes,
    *,
    slow: float,
    stall: float,
    on_slow: Callable[[], None],
) -> None:
    """Write `data` a piece at a time, watching the peer take it (flow control holds a
    write until the peer reads): `on_slow()`, once, when a piece has waited `slow`
    seconds (it may raise, to give up); ReaderStalled when one has waited `stall`
    seconds. Raises what `write` and `on_slow` raise, as they raise it."""
    moved = trio.current_time()

    async def watch() -> None:
        while True:
            await trio.sleep_until(moved + slow)
            if trio.current_time() >= moved + slow:
                on_slow()
                return

    with trio.CancelScope() as hard:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                for start in range(0, len(data), PIECE):
                    hard.deadline = moved + stall
                    # Sliced, not viewed: a frame that stands for more bytes than it holds
                    # (the simulator's) keeps its proportions.
                    await write(stream, data[start : start + PIECE])
                    moved = trio.current_time()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One failure (the writer's or the watcher's) at a time: raised as itself.
            if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
                raise
            failure = group.exceptions[0]
            if isinstance(failure, StreamGone) and WINDOW_SHUT in str(failure):
                raise ReaderStalled("the peer opened no window for 5 s") from None
            raise failure from None
        hard.deadline = math.inf
    if hard.cancelled_caught:
        raise ReaderStalled(f"the peer took nothing for {stall:.0f} s")
