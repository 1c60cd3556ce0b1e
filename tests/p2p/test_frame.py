"""Length-prefixed frames: any split of the byte stream gives the same payloads; a
hostile length is refused before its payload is buffered."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p import frame
from p2p.frame import FrameDecoder, FrameError, FrameTooLarge


@given(
    payloads=st.lists(st.binary(max_size=600), max_size=8),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
)
def test_any_split_gives_the_same_payloads(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame.encode(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder()
    got = []
    for a, b in itertools.pairwise(points):
        got += dec.feed(stream[a:b])
    dec.close()
    assert got == payloads and dec.buffered == 0


def test_oversized_length_is_refused_at_once() -> None:
    dec = FrameDecoder(cap=1024)
    with pytest.raises(FrameTooLarge, match="1,025 bytes exceeds the 1,024-byte limit"):
        dec.feed(struct.pack(">I", 1025))  # no payload needed to refuse it
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        frame.encode(b"x" * 1025, cap=1024)


def test_truncated_stream() -> None:
    for data in (b"\x00\x00", frame.encode(b"hello")[:-1]):
        dec = FrameDecoder()
        assert dec.feed(data) == []
        with pytest.raises(FrameError, match="stream ended inside a frame"):
            dec.close()


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    dec = FrameDecoder(cap=4096)
    try:
        for payload in dec.feed(data):
            assert len(payload) <= 4096
    except FrameError:
        pass
