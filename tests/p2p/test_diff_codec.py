"""Blocks sent as diffs against the requester's bases: exact bytes back, a server that
lacks a base answers plainly (and says so), a diff that does not decode is a BadDiff to
ask again for, never a stored block."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.blocks import (
    MAX_BASE_BYTES,
    BadDiff,
    Block,
    BlockClient,
    BlocksError,
    BlockServer,
    Entry,
    Kind,
    Want,
    _pack,
    runs,
)
from store.chunking import digest

OLD = random.Random(1).randbytes(1 << 20)


def _new(edits: list[tuple[int, bytes]]) -> bytes:
    b = bytearray(OLD)
    for at, data in edits:
        b[at : at + len(data)] = data
    return bytes(b)


@settings(max_examples=30)
@given(
    st.lists(
        st.tuples(st.integers(0, (1 << 20) - 64), st.binary(min_size=1, max_size=64)), max_size=5
    )
)
def test_a_diff_gives_back_exactly_the_chunk(edits: list[tuple[int, bytes]]) -> None:
    new = _new(edits)
    d, base = digest(new), digest(OLD)
    client = BlockClient()
    client.want([Want(d, bases=(base,))], {base: OLD})
    frame = BlockServer.reply([Block(d, new)], bases={d: (base,)}, have={base: OLD})
    (got,) = client.receive_data(frame)
    assert isinstance(got, Block) and got.data == new and got.diff
    assert got.wire < 8 * 1024 + 100 * len(edits)  # a few edits cost bytes, not a megabyte


def test_a_server_without_the_base_answers_plainly_and_the_client_decodes_it() -> None:
    new = _new([(100, b"changed")])
    d, base = digest(new), digest(OLD)
    wants = [Want(d, bases=(base,))]
    block = [Block(d, new)]
    # The base is not among what the server found: plain.
    assert runs(block, {d: (base,)}, {}) == [(block, b"")]
    assert runs(block, {d: (base,)}, {base: OLD}) == [(block, OLD)]
    many = tuple(digest(bytes([i])) for i in range(17))
    found = dict.fromkeys(many, b"x" * (1 << 20))
    assert MAX_BASE_BYTES < 17 << 20 and runs(block, {d: many}, found) == [(block, b"")]
    client = BlockClient()
    client.want(wants, {base: OLD})
    (got,) = client.receive_data(BlockServer.reply([Block(d, new)]))
    assert got.data == new and not got.diff


def test_a_diff_that_does_not_decode_is_a_bad_diff() -> None:
    new = _new([(5, b"abc")])
    d = digest(new)
    client = BlockClient()
    base = digest(OLD)
    client.want([Want(d, bases=(base,))], {base: OLD[:-1] + b"?"})  # our base differs from theirs
    z = bytearray(BlockServer.reply([Block(d, new)], bases={d: (base,)}, have={base: OLD}))
    z[-40] ^= 0xFF  # and the stream is damaged on the way
    got = client.receive_data(bytes(z))
    assert got == [BadDiff(d)] or (
        isinstance(got[0], Block) and got[0].diff
    )  # if it decodes, the hash decides
    if isinstance(got[0], Block):
        assert digest(got[0].data) != d


def test_a_diff_nobody_asked_for_is_a_protocol_error() -> None:
    new = _new([])
    d = digest(new)
    client = BlockClient()
    client.want([Want(d)])
    frame = _pack(Kind.REPLY, [[int(Entry.BLOCK_DIFF), d, len(new), b"\x28\xb5\x2f\xfd"]])
    with pytest.raises(BlocksError, match="without bases"):
        client.receive_data(frame)
