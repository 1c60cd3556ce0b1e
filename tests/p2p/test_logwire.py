"""`/ferry/log/1` messages: every kind round-trips, and nothing else decodes."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p import frame, logwire

KEY = st.binary(min_size=32, max_size=32)
HASHES = st.lists(st.binary(min_size=32, max_size=32), max_size=logwire.MAX_PROOF).map(tuple)
SIZE = st.integers(1, (1 << 62) - 2)

MESSAGES = st.one_of(
    st.builds(logwire.Head, KEY),
    st.builds(
        logwire.Entries, KEY, st.integers(0, (1 << 62) - 1), st.integers(1, logwire.MAX_COUNT)
    ),
    st.builds(logwire.Signed, st.binary(max_size=600)),
    st.builds(
        logwire.Leaves,
        st.lists(st.binary(max_size=100), max_size=logwire.MAX_COUNT).map(tuple),
    ),
    st.builds(logwire.Nothing, st.text(max_size=200)),
    SIZE.flatmap(
        lambda old: st.builds(
            logwire.Consistent,
            KEY,
            st.binary(min_size=16, max_size=16),
            st.just(old),
            st.integers(old + 1, (1 << 62) - 1),
        )
    ),
    st.builds(logwire.Proved, st.binary(max_size=600), st.binary(max_size=600), HASHES),
    st.builds(
        logwire.Included, st.lists(KEY, min_size=1, max_size=logwire.MAX_INCLUDED).map(tuple)
    ),
    st.builds(logwire.Logged, st.lists(st.binary(max_size=200), max_size=40).map(tuple)),
)


@given(MESSAGES)
def test_every_message_round_trips(message: logwire.Message) -> None:
    (payload,) = frame.FrameDecoder(logwire.CAP).feed(logwire.encode(message))
    assert logwire.decode(payload) == message


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_the_formats_error(raw: bytes) -> None:
    with contextlib.suppress(logwire.LogWireError):
        logwire.decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        [5, b"k" * 32, b"l" * 16, 4, 4],  # not from smaller to larger
        [5, b"k" * 32, b"l" * 16, 0, 4],  # from nothing: nothing to prove
        [5, b"k" * 32, b"l" * 15, 1, 4],  # a log id of another size
        [5, b"k" * 31, b"l" * 16, 1, 4],
        [6, b"a", b"b", [b"h" * 31]],
        [6, b"a", b"b", [b"h" * 32] * (logwire.MAX_PROOF + 1)],
        [6, b"a", "b", []],
        [1, b"k" * 32, 0, logwire.MAX_COUNT + 1],
        [7, []],  # INCLUDED about nothing
        [7, [b"d" * 31]],
        [7, [b"d" * 32] * (logwire.MAX_INCLUDED + 1)],
        [8, [b"x"] * (logwire.MAX_LOGGED_ANSWER + 1)],
        [9, b"k" * 32],
    ],
)
def test_bad_requests_and_answers_are_refused(raw: list[object]) -> None:
    with pytest.raises(logwire.LogWireError):
        logwire.decode(msgpack.packb(raw, use_bin_type=True))
