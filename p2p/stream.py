"""The thin trio side of the sans-io codecs: bytes in and out of a libp2p stream."""

from __future__ import annotations

from typing import Protocol

from libp2p.network.stream.exceptions import StreamEOF, StreamError

READ = 1 << 20


class ByteStream(Protocol):
    """What ferry needs of a stream: libp2p's `INetStream` and the simulator's links."""

    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...


class StreamGone(ConnectionError):
    """The peer closed or reset the stream, or the connection died."""


async def read_some(stream: ByteStream) -> bytes:
    """The next bytes the peer sent; b"" at a clean end of stream."""
    try:
        return await stream.read(READ)
    except StreamEOF:
        return b""
    except StreamError as e:
        raise StreamGone(str(e) or type(e).__name__) from None


async def write(stream: ByteStream, data: bytes) -> None:
    if not data:
        return
    try:
        await stream.write(data)
    except StreamError as e:
        raise StreamGone(str(e) or type(e).__name__) from None


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
