"""`Range: bytes=...` requests (RFC 9110 §14), for one range; anything else is ignored.

Nix itself never sends Range, but `curl -C -` and download managers do, and a wrong
206 is worse than none: a malformed or multi-range header gets the whole body (200),
which the RFC allows; a well-formed range past the end gets 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ONE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
# Past any body's size; a longer number is not converted (Python refuses to turn more
# than 4,300 digits into an int, and a client may send any number of them).
_HUGE = 1 << 63


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


class Unsatisfiable(ValueError):
    """The range lies wholly past the end: 416 with `Content-Range: bytes */<size>`."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive, as Content-Range writes it

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse(header: str | None, size: int) -> ByteRange | None:
    """The range asked for, clamped to the body; None to send the whole body."""
    if header is None:
        return None
    m = _ONE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":  # a suffix: the last N bytes
        n = _number(last)
        if n == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(max(0, size - n), size - 1)
    start = _number(first)
    end = _number(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored, per the RFC
    if start >= size:
        raise Unsatisfiable(header)
    return ByteRange(start, min(end, size - 1))
