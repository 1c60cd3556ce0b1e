from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ondemand import fanotify
from ondemand.fanotify import Event, EventReader, FanotifyError
from ondemand.readahead import Readahead

events = st.builds(
    Event,
    st.integers(-1, 2**31 - 1),
    st.integers(0, 2**31 - 1),
    st.sampled_from([fanotify.FAN_PRE_ACCESS, 0x1, fanotify.FAN_PRE_ACCESS | 0x1]),
    st.integers(0, 2**63),
    st.integers(0, 2**40),
) | st.builds(Event, st.integers(0, 1000), st.integers(0, 1000), st.just(0x1), st.none(), st.none())


@given(st.lists(events, max_size=20), st.integers(1, 200))
def test_events_round_trip_in_any_pieces(evs: list[Event], piece: int) -> None:
    data = b"".join(fanotify.encode_event(e) for e in evs)
    r = EventReader()
    got = []
    for i in range(0, len(data), piece):
        got += r.feed(data[i : i + piece])
    assert got == evs


@given(st.binary(max_size=300))
def test_junk_is_refused_or_waited_for(data: bytes) -> None:
    try:
        EventReader().feed(data)
    except FanotifyError:
        pass


def test_a_zero_length_info_record_cannot_loop() -> None:
    meta = struct.pack("<IBBHQii", 24 + 4, 3, 0, 24, fanotify.FAN_PRE_ACCESS, 5, 1) + struct.pack(
        "<BBH", 6, 0, 0
    )
    with pytest.raises(FanotifyError):
        EventReader().feed(meta)


def test_responses() -> None:
    assert fanotify.allow(7) == struct.pack("<iI", 7, 1)
    assert fanotify.deny(7, 5) == struct.pack("<iI", 7, 2 | 5 << 24)


def test_readahead_grows_on_sequential_reads_and_stops_on_jumps() -> None:
    r = Readahead()
    spans = [r.plan("f", i, i, 1000, 65536) for i in (0, 1, 2, 3, 4)]
    assert [len(s) for s in spans] == [9, 17, 33, 65, 129]  # 8, 16, 32, 64, then the 128-chunk cap
    assert r.plan("f", 500, 500, 1000, 65536) == range(500, 501)  # a jump fetches what it asks
    assert r.plan("f", 500, 500, 1000, 65536) == range(
        500, 501
    )  # more reads inside that chunk: no growth
    assert len(r.plan("f", 501, 501, 1000, 65536)) == 9
    big = Readahead()
    for i in range(6):
        s = big.plan("g", i, i, 10_000, 1 << 20)
    assert len(s) == 1 + 32  # 32 MiB of 1 MiB chunks at most
    assert Readahead().plan("h", 0, 2, 3, 65536) == range(3)  # never past the file's end
