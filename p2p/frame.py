"""Length-prefixed frames, the unit of every ferry stream protocol (sans-io).

    frame = length: uint32 big-endian, then `length` bytes of payload

The decoder is fed bytes as they arrive, in pieces of any size, and returns whole
payloads. A length above the cap is refused as soon as its 4 bytes are in, before any
payload is buffered, so a peer cannot make us hold more than one capped frame.
"""

from __future__ import annotations

import struct

HEADER = 4
DEFAULT_CAP = 8 << 20  # blocks are batched to ~1-4 MiB frames; twice that is plenty


class FrameError(ValueError):
    """The peer broke the framing; the stream must be closed."""


class FrameTooLarge(FrameError):
    def __init__(self, length: int, cap: int) -> None:
        self.length = length
        super().__init__(f"frame of {length:,} bytes exceeds the {cap:,}-byte limit")


def encode(payload: bytes, cap: int = DEFAULT_CAP) -> bytes:
    if len(payload) > cap:
        raise FrameTooLarge(len(payload), cap)
    return struct.pack(">I", len(payload)) + payload


class FrameDecoder:
    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the payloads they complete, in order."""
        self._buf += data
        out = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER:
                    break
                (n,) = struct.unpack_from(">I", self._buf)
                if n > self.cap:
                    raise FrameTooLarge(n, self.cap)
                del self._buf[:HEADER]
                self._need = n
            if len(self._buf) < self._need:
                break
            out.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None
        return out

    @property
    def mid_frame(self) -> bool:
        return bool(self._buf) or self._need is not None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        """End of stream: anything left over is a truncated frame."""
        if self._buf or self._need is not None:
            raise FrameError(f"stream ended inside a frame ({len(self._buf)} bytes of it received)")
