"""A transfer's decisions as a pure state machine, fed replies and `now`: what is asked
of whom, when a peer is late or stalling, when a block is bad, when a diff falls back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.exchange.progress import Progress
from node.exchange.schedule import ENDGAME_WAIT, Schedule
from node.exchange.transfer import QUERY_PERIOD, BadPeer, Transfer
from p2p.blocks import BadDiff, Block, Busy, DontHave, Have
from store.chunking import digest as blake3_digest

TIMEOUT = 10.0


def _chunks(n: int, size: int = 4096) -> dict[bytes, bytes]:
    data = [bytes([i % 251 + 1]) * size for i in range(n)]
    return {blake3_digest(d): d for d in data}


def _transfer(chunks: dict[bytes, bytes], *peers: str) -> Transfer:
    t = Transfer(Schedule({d: len(c) for d, c in chunks.items()}), TIMEOUT, Progress())
    for p in peers:
        t.sched.add_peer(p)
        t.open(p, 0.0)
    return t


def _asked(t: Transfer, peer: str, now: float) -> list[bytes]:
    in_flight = set(t.sched.peers[peer].in_flight)
    return t.step(peer, now, in_flight.__contains__).ask


def test_good_blocks_are_stored_and_counted_once() -> None:
    chunks = _chunks(3)
    t = _transfer(chunks, "a")
    asked = _asked(t, "a", 0.0)
    assert sorted(asked) == sorted(chunks)
    judged = t.judge("a", [Block(d, chunks[d], wire=100) for d in asked], 1.0)
    assert [d for d, _ in judged.good] == asked and not judged.requeued
    t.stored("a", judged, 1.0)
    assert t.complete
    p = t.progress
    assert (p.chunks_done, p.bytes_done, p.received_bytes) == (3, 3 * 4096, 300)
    assert p.per_peer == {"a": 3 * 4096}
    # The same block again (an endgame duplicate): counted as such, stored no more.
    again = t.judge("a", [Block(asked[0], chunks[asked[0]], wire=100)], 2.0)
    assert not again.good and t.progress.duplicate_bytes == 100


@pytest.mark.parametrize("lie", ["short", "other bytes"])
def test_a_block_that_is_not_the_chunk_is_a_bad_peer(lie: str) -> None:
    chunks = _chunks(1)
    t = _transfer(chunks, "a")
    (d,) = _asked(t, "a", 0.0)
    data = chunks[d][:-1] if lie == "short" else bytes(len(chunks[d]))
    with pytest.raises(BadPeer, match="bytes for a" if lie == "short" else "does not hash"):
        t.judge("a", [Block(d, data)], 1.0)


def test_a_diff_that_decodes_wrong_is_asked_for_again_plain() -> None:
    chunks = _chunks(1)
    (d,) = chunks
    t = _transfer(chunks, "a")
    t.bases[d] = (b"base" * 8,)
    assert _asked(t, "a", 0.0) == [d] and t.with_bases([d]) == {d: (b"base" * 8,)}
    # Decoded against our bases into something else: not the peer's fault for sure.
    judged = t.judge("a", [Block(d, bytes(4096), diff=True)], 1.0)
    assert not judged.good and judged.requeued
    assert d in t.plain and t.with_bases([d]) == {}
    assert _asked(t, "a", 1.0) == [d]  # asked again, plain this time
    t2 = _transfer(chunks, "b")
    t2.bases[d] = (b"base",)
    _asked(t2, "b", 0.0)
    assert t2.judge("b", [BadDiff(d)], 1.0).requeued and d in t2.plain


def test_refusals_and_busy_requeue_and_have_is_news() -> None:
    chunks = _chunks(3)
    t = _transfer(chunks, "a")
    a, b, c = _asked(t, "a", 0.0)
    judged = t.judge("a", [DontHave(a), Busy(b)], 1.0)
    assert judged.requeued and not judged.good
    assert t.sched.resting_until("a") > 1.0  # a busy peer is left alone for a while
    t.judge("a", [Have(c)], 7.0)
    assert t.last_news == 7.0


def test_a_peer_that_never_answers_is_stalling_one_that_did_is_only_late() -> None:
    chunks = _chunks(4)
    silent = _transfer(chunks, "a")
    _asked(silent, "a", 0.0)
    with pytest.raises(BadPeer, match="answered nothing"):
        _asked(silent, "a", TIMEOUT + 1)
    slow = _transfer(chunks, "a")
    asked = _asked(slow, "a", 0.0)
    slow.heard("a", 1.0)  # it sent something: serving many, not stalling
    in_flight = set(slow.sched.peers["a"].in_flight)
    step = slow.step("a", 1.0 + 3 * TIMEOUT, in_flight.__contains__)
    assert step.requeued and set(step.cancels) <= set(asked) and step.cancels
    assert slow.last_news == 1.0 + 3 * TIMEOUT


def test_a_chunk_from_one_peer_is_cancelled_at_the_other() -> None:
    chunks = _chunks(1)
    (d,) = chunks
    t = _transfer(chunks, "a", "b")
    assert _asked(t, "a", 0.0) == [d]
    # The endgame: with nothing else left and a silent, b is asked for the same chunk.
    assert _asked(t, "b", 0.0) == []
    assert _asked(t, "b", ENDGAME_WAIT) == [d]
    judged = t.judge("a", [Block(d, chunks[d], wire=10)], 2.0)
    t.stored("a", judged, 2.0)
    assert t.cancels_now() == ["b"]
    assert t.take_cancels("b", lambda x: True) == [d]


def test_a_partial_peer_is_queried_once_a_period() -> None:
    chunks = _chunks(3)
    t = _transfer(chunks, "p")
    asked = _asked(t, "p", 0.0)
    # It lacks one: a fetcher part way through, asked to announce what it gets.
    t.judge("p", [DontHave(asked[0])], 0.5)
    assert t.sched.is_partial("p")
    assert t.step("p", 1.0, lambda x: False).query == [asked[0]]
    assert not t.step("p", 1.0 + QUERY_PERIOD / 2, lambda x: False).query


def test_hopeless_only_after_a_quiet_request_timeout() -> None:
    chunks = _chunks(1)
    (d,) = chunks
    t = _transfer(chunks, "a")
    _asked(t, "a", 0.0)
    t.judge("a", [DontHave(d)], 1.0)
    t.news(1.0)
    assert t.hopeless(1.0 + TIMEOUT / 2) is None  # another fetcher may still announce it
    assert "held by none of the 1 connected peers" in (t.hopeless(1.0 + TIMEOUT) or "")
    t.close("a")
    assert "no peer to fetch them from" in (t.hopeless(2.0) or "")


@given(st.lists(st.sampled_from(["good", "dont", "busy", "have"]), min_size=1, max_size=30))
def test_every_chunk_is_counted_once_whatever_the_replies(kinds: list[str]) -> None:
    chunks = _chunks(6, 64)
    t = _transfer(chunks, "a", "b")
    now = 0.0
    for kind in kinds:
        now += 1.0
        for peer in ("a", "b"):
            t.heard(peer, now)
            for d in _asked(t, peer, now):
                reply = {
                    "good": Block(d, chunks[d], wire=1),
                    "dont": DontHave(d),
                    "busy": Busy(d),
                    "have": Have(d),
                }[kind]
                judged = t.judge(peer, [reply], now)
                t.stored(peer, judged, now)
    p = t.progress
    assert p.chunks_done == len(t.sched.done) <= len(chunks)
    assert p.bytes_done == 64 * p.chunks_done == sum(p.per_peer.values())
