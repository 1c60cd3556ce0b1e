"""`/ferry/summary/1` without I/O: what a peer lists is what the reader holds."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p import summary
from p2p.frame import FrameError
from p2p.frame import encode as frame

KEYS = st.frozensets(st.binary(min_size=summary.KEY, max_size=summary.KEY), max_size=50)
HASHES = st.text(alphabet="0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@given(
    st.lists(
        st.one_of(
            st.builds(summary.Add, KEYS),
            st.builds(summary.Remove, KEYS),
        ),
        max_size=10,
    ),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_the_reader_holds_what_was_added_and_not_removed(
    msgs: list[summary.Add | summary.Remove], cuts: list[int]
) -> None:
    wire = b"".join(summary.encode(m) for m in msgs) + summary.encode(summary.Synced())
    reader = summary.PeerSummary()
    got: list[summary.Message] = []
    for piece in _split(wire, cuts):
        got += reader.receive_data(piece)
    assert got == [*msgs, summary.Synced()]
    want: set[bytes] = set()
    for m in msgs:
        want = want | m.keys if isinstance(m, summary.Add) else want - m.keys
    assert reader.keys == want and reader.synced


@given(st.sets(HASHES, max_size=20), HASHES)
def test_a_listed_path_is_found_by_its_hash(hashes: set[str], other: str) -> None:
    reader = summary.PeerSummary()
    reader.receive_data(summary.encode_all(summary.Add, {summary.key(h) for h in hashes}))
    assert all(h in reader for h in hashes)
    assert (other in reader) == (other in hashes)


def test_a_long_listing_is_split_into_frames_that_fit() -> None:
    keys = {i.to_bytes(summary.KEY, "big") for i in range(summary.MAX_KEYS + 5)}
    wire = summary.encode_all(summary.Add, keys)
    reader = summary.PeerSummary()
    assert len(reader.receive_data(wire)) == 2
    assert reader.keys == keys
    with pytest.raises(summary.SummaryError):
        summary.encode(summary.Add(frozenset(keys)))


@given(st.binary(max_size=200))
def test_any_bytes_give_only_protocol_errors(data: bytes) -> None:
    try:
        summary.PeerSummary().receive_data(data)
    except FrameError:
        pass


@pytest.mark.parametrize(
    "body",
    [[0, b"short"], [7, b""], [2, b""], [0], "x", [1, "text"]],
)
def test_malformed_messages_are_refused(body: object) -> None:
    with pytest.raises(summary.SummaryError):
        summary.PeerSummary().receive_data(frame(msgpack.packb(body)))


def test_synced_twice_is_refused() -> None:
    reader = summary.PeerSummary()
    reader.receive_data(summary.encode(summary.Synced()))
    with pytest.raises(summary.SummaryError):
        reader.receive_data(summary.encode(summary.Synced()))
