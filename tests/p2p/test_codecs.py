"""The `/ferry/blocks/2` and `/ferry/claims/1` state machines, driven without any I/O."""

from __future__ import annotations

import msgpack
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from p2p import blocks, claimwire
from p2p.blocks import (
    Block,
    BlockClient,
    BlocksError,
    BlockServer,
    Busy,
    Cancel,
    DontHave,
    Have,
    Want,
    Wants,
)
from p2p.frame import FrameError
from p2p.frame import encode as frame
from store.chunking import digest as blake3

INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@given(
    st.lists(
        st.tuples(st.binary(max_size=3000), st.booleans(), st.booleans()),
        min_size=1,
        max_size=20,
        unique_by=lambda x: x[0],
    ),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_round_trip_in_any_pieces(items: list[tuple[bytes, bool, bool]], cuts: list[int]) -> None:
    client, server = BlockClient(), BlockServer()
    wants = [Want(blake3(data), block=block) for data, block, _ in items]
    busy = {blake3(data) for data, _, b in items if b}
    events = []
    for piece in _split(client.want(wants), cuts):
        events += server.receive_data(piece)
    assert [w for e in events if isinstance(e, Wants) for w in e.wants] == wants
    taken = server.take(100)
    assert taken == wants and server.pending == 0
    by_digest = {blake3(d): d for d, _, _ in items}
    replies = [
        (Busy(w.digest) if w.digest in busy else Block(w.digest, by_digest[w.digest]))
        if w.block
        else Have(w.digest)
        for w in taken
    ]
    got = []
    for piece in _split(BlockServer.reply(replies), cuts):
        got += client.receive_data(piece)
    # Entries without data come first (a refusal is not queued behind blocks), in order.
    assert got == sorted(replies, key=lambda r: isinstance(r, Block)) and client.outstanding == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.lists(st.integers(0, 12), max_size=blocks.MAX_BASES)),
        min_size=1,
        max_size=60,
        unique_by=lambda x: x[0],
    ),
    st.lists(st.integers(0, 10), min_size=60, max_size=60),
)
def test_bases_a_frame_listed_before_travel_as_indices(
    items: list[tuple[int, list[int]]], marks: list[int]
) -> None:
    pool = [blake3(b"base %d" % i) for i in range(13)]
    wants = [
        Want(blake3(b"%d" % n), bases=tuple(dict.fromkeys(pool[i] for i in bs))) for n, bs in items
    ]
    groups = sorted(marks[: len(wants)])
    server = BlockServer()
    raw = BlockClient().want(wants, groups=groups)
    events = server.receive_data(raw)
    assert [w for e in events if isinstance(e, Wants) for w in e.wants] == wants
    # Every base digest goes out once per frame at most.
    frames = len(set(groups))
    listed = sum(len(w.bases) for w in wants)
    distinct = len({b for w in wants for b in w.bases})
    assert raw.count(pool[0][:8]) <= frames
    if listed > distinct * frames:
        assert len(raw) < sum(len(msgpack.packb(w.encode())) for w in wants)


def test_a_base_index_past_the_frames_bases_is_a_protocol_error() -> None:
    d = blake3(b"x")
    with pytest.raises(BlocksError, match="base 1 of a frame that listed 1"):
        BlockServer().receive_data(frame(msgpack.packb([0, [[d, True, [d]], [d, True, [1]]]])))
    with pytest.raises(BlocksError, match="base 0 of a frame that listed 0"):
        BlockServer().receive_data(frame(msgpack.packb([0, [[d, True, [0]]]])))


def test_delta_against_bases_decodes_with_the_same_prefix() -> None:
    base = bytes(range(256)) * 400
    new = base[:50_000] + b"changed" + base[50_000:]
    d = blake3(new)
    client = BlockClient()
    b = blake3(base)
    client.want([Want(d, bases=(b,))], base_bytes={b: base})
    wire = BlockServer.reply([Block(d, new)], bases={d: (b,)}, have={b: base})
    assert len(wire) < 200  # the base made it nearly free
    assert client.receive_data(wire) == [Block(d, new)]


def test_cancel_removes_pending_wants_and_late_dont_have_is_ignored() -> None:
    client, server = BlockClient(), BlockServer()
    a, b = blake3(b"a"), blake3(b"b")
    server.receive_data(client.want([Want(a), Want(b)]))
    assert server.receive_data(client.cancel([a])) == [Cancel((a,))]
    assert [w.digest for w in server.take(10)] == [b]
    # Answers that crossed the cancel on the wire are dropped, not held against the peer.
    assert client.receive_data(BlockServer.reply([DontHave(a), Block(a, b"a")])) == []


@pytest.mark.parametrize(
    "reply, message",
    [
        ([[0, blake3(b"x"), 1, b"x"]], "unsolicited"),
        ([[1, blake3(b"x"), 5, b"x"]], "not the 5"),
        ([[0, blake3(b"x"), 1, b"not zstd"]], "decompress"),
        ([[0, blake3(b"x"), 1, zstandard.ZstdCompressor().compress(b"x" * 1000)]], "declares"),
        ([[1, blake3(b"x"), blocks.MAX_BLOCK + 1, b"x"]], "limit"),
        ([[9, blake3(b"x")]], "unknown reply"),
        ([[2, blake3(b"x")]], "HAVE"),
    ],
)
def test_client_refuses_what_it_did_not_ask_for(reply: list, message: str) -> None:
    client = BlockClient()
    if message != "unsolicited":
        client.want([Want(blake3(b"x"))])
    with pytest.raises(BlocksError, match=message):
        client.receive_data(frame(msgpack.packb([2, reply])))


def test_busy_answers_only_a_want_block() -> None:
    client = BlockClient()
    d = blake3(b"x")
    client.want([Want(d, block=False)])
    with pytest.raises(BlocksError, match="want-have with BUSY"):
        client.receive_data(BlockServer.reply([Busy(d)]))
    client = BlockClient()
    client.want([Want(d)])
    assert (
        client.receive_data(BlockServer.reply([Busy(d)])) == [Busy(d)] and client.outstanding == 0
    )


def test_server_limits_outstanding_wants() -> None:
    server = BlockServer(max_wants=10)
    client = BlockClient()
    with pytest.raises(BlocksError, match="more than 10"):
        server.receive_data(client.want(Want(blake3(bytes([i]))) for i in range(11)))


@given(st.binary(max_size=2000))
def test_server_survives_any_bytes_with_only_protocol_errors(data: bytes) -> None:
    try:
        BlockServer().receive_data(data)
    except FrameError:
        pass


@given(
    st.lists(
        st.one_of(
            INTS,
            st.binary(max_size=40),
            st.booleans(),
            st.none(),
            st.lists(st.one_of(INTS, st.binary(max_size=40)), max_size=4),
        ),
        max_size=4,
    )
)
def test_client_survives_any_msgpack_with_only_protocol_errors(body: list) -> None:
    client = BlockClient()
    client.want([Want(blake3(b"x"))])
    try:
        client.receive_data(frame(msgpack.packb([2, body])))
    except FrameError:
        pass


@given(
    st.sampled_from(
        [
            claimwire.Get("0" * 32),
            claimwire.Claims((b"a", b"b")),
            claimwire.Push(()),
            claimwire.Ack(3),
            claimwire.Gets(("0" * 32, "z" * 32)),
        ]
    ),
    st.lists(st.integers(0, 1000), max_size=5),
)
def test_claims_messages_round_trip(msg: claimwire.Message, cuts: list[int]) -> None:
    reader = claimwire.Reader()
    out = None
    for piece in _split(claimwire.encode(msg), cuts):
        out = reader.receive_data(piece) or out
    assert out == msg


@given(st.binary(max_size=500))
def test_claims_reader_survives_any_bytes(data: bytes) -> None:
    try:
        claimwire.Reader().receive_data(frame(data))
    except FrameError:
        pass


def test_claims_reader_refuses_a_second_message_and_bad_hashes() -> None:
    with pytest.raises(claimwire.ClaimsError, match="more than one"):
        claimwire.Reader().receive_data(claimwire.encode(claimwire.Ack(1)) * 2)
    with pytest.raises(claimwire.ClaimsError, match="nix32"):
        claimwire.Reader().receive_data(frame(msgpack.packb([0, "e" * 32])))


NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
path_hashes = st.text(NIX32, min_size=32, max_size=32)


@given(
    st.lists(path_hashes, min_size=1, max_size=claimwire.MAX_GETS),
    st.lists(st.lists(st.binary(max_size=40), max_size=3), min_size=1, max_size=20),
    st.lists(st.integers(0, 5000), max_size=5),
)
def test_gets_and_its_answers_round_trip(
    hashes: list[str], answers: list[list[bytes]], cuts: list[int]
) -> None:
    reader = claimwire.Reader()
    got = None
    for piece in _split(claimwire.encode(claimwire.Gets(tuple(hashes))), cuts):
        got = reader.receive_data(piece) or got
    assert got == claimwire.Gets(tuple(hashes))
    # One CLAIMS a hash, in the order asked; done exactly when the last is in.
    collect = claimwire.Answers(len(answers))
    wire = b"".join(claimwire.encode(claimwire.Claims(tuple(a))) for a in answers)
    done = [collect.receive_data(piece) for piece in _split(wire, cuts) if piece]
    assert done[-1] and not any(done[:-1])
    assert collect.answers == [tuple(a) for a in answers]


def test_gets_is_bounded_and_its_answers_strict() -> None:
    with pytest.raises(claimwire.ClaimsError, match="1 to 256"):
        claimwire.Gets(())
    with pytest.raises(claimwire.ClaimsError, match="1 to 256"):
        claimwire.Gets(("0" * 32,) * (claimwire.MAX_GETS + 1))
    with pytest.raises(claimwire.ClaimsError, match="max_array_len"):
        claimwire.decode(msgpack.packb([4, ["0" * 32] * (claimwire.MAX_GETS + 1)]))
    with pytest.raises(claimwire.ClaimsError, match="nix32"):
        claimwire.decode(msgpack.packb([4, ["0" * 32, "e" * 32]]))
    with pytest.raises(claimwire.ClaimsError, match="more than the 1 answers"):
        claimwire.Answers(1).receive_data(claimwire.encode(claimwire.Claims(())) * 2)
    with pytest.raises(claimwire.ClaimsError, match="other than CLAIMS"):
        claimwire.Answers(2).receive_data(claimwire.encode(claimwire.Ack(1)))


def test_a_want_have_waits_for_the_chunk_until_cancelled() -> None:
    d1, d2 = blake3(b"one"), blake3(b"two")
    client, server = BlockClient(), BlockServer()
    server.receive_data(client.want([Want(d1, block=False), Want(d2, block=False)]))
    server.wait(server.take(10))  # neither is here yet: subscriptions
    assert sorted(server.waiting) == sorted([d1, d2])
    assert server.arrived([d1]) == [Have(d1)] and server.waiting == [d2]
    assert client.receive_data(BlockServer.reply([Have(d1)])) == [Have(d1)]
    server.receive_data(client.cancel([d2]))
    assert server.waiting == [] and server.arrived([d2]) == []
    with pytest.raises(ValueError):
        server.wait([Want(d1)])  # a want-block is answered at once, never kept


def test_waiting_want_haves_count_toward_the_limit() -> None:
    client, server = BlockClient(), BlockServer(max_wants=4)
    server.receive_data(client.want([Want(blake3(bytes([i])), block=False) for i in range(4)]))
    server.wait(server.take(10))
    with pytest.raises(BlocksError, match="more than 4"):
        server.receive_data(client.want([Want(blake3(b"x"))]))
