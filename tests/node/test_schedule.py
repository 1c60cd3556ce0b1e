"""The fetch scheduler as a pure state machine: who gets asked for what."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.exchange.schedule import ENDGAME_WAIT, MIN_WINDOW, RUN_CHUNKS, SCAN, Schedule
from p2p.blocks import RUN_CAP


def _chunks(n: int, size: int = 1 << 20) -> dict[bytes, int]:
    return {i.to_bytes(32, "big"): size for i in range(n)}


def test_faster_peer_is_given_more() -> None:
    s = Schedule(_chunks(400, 64 << 10))
    s.add_peer("fast")
    s.add_peer("slow")
    now = 0.0
    got = {"fast": 0, "slow": 0}
    for step in range(200):
        now += 0.01
        for p in ("fast", "slow"):
            asked = s.take(p, now)
            # fast delivers everything each tick; slow one chunk every 10 ticks
            deliver = asked if p == "fast" else []
            pending = list(s.peers[p].in_flight)
            if p == "slow" and step % 10 == 0 and pending:
                deliver = pending[:1]
            for d in deliver:
                if d in s.peers[p].in_flight:
                    s.received(p, d, now + 0.005)
                    got[p] += 1
        if s.complete:
            break
    assert s.complete
    assert got["fast"] > 5 * got["slow"]
    assert s.peers["fast"].window > MIN_WINDOW


def test_dont_have_and_failure_move_work_to_others() -> None:
    s = Schedule(_chunks(8))  # two runs
    s.add_peer("a")
    s.add_peer("b")
    a = s.take("a", 0)
    assert a and s.take("b", 0)  # b gets what is left
    s.refused("a", a[0])
    assert a[0] not in s.take("a", 0)  # never again to a (it may duplicate b's in the endgame)
    back = s.remove_peer("b")
    assert back
    s.add_peer("c")
    got = s.take("c", 1)
    assert set(got) == set(back)  # the failed peer's work first
    for d in got:
        s.received("c", d, 2)
    assert a[0] in s.take("c", 3)


def test_unobtainable_when_every_peer_refused() -> None:
    s = Schedule(_chunks(1))
    s.add_peer("a")
    (d,) = s.take("a", 0)
    s.refused("a", d)
    assert s.unobtainable() == [d]


def test_timeouts_requeue_and_endgame_duplicates_once() -> None:
    s = Schedule(_chunks(2))
    s.add_peer("a")
    s.add_peer("b")
    first = s.take("a", 0)
    assert len(first) == 2
    # Nothing left in the queue: b duplicates a's requests, once a has been silent a while.
    assert s.take("b", 0) == [] and s.endgame_at("b") == ENDGAME_WAIT
    dup = s.take("b", ENDGAME_WAIT)
    assert dup == first
    assert s.take("b", ENDGAME_WAIT) == []
    assert set(s.received("b", dup[0], ENDGAME_WAIT + 0.1)) == {"a"}  # cancel it at a
    assert s.timed_out("a", 100, 10) == [first[1]]


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["take", "recv", "refuse", "drop"])),
        max_size=60,
    )
)
def test_no_chunk_is_lost(ops: list[tuple[str, str]]) -> None:
    s = Schedule(_chunks(6, 1 << 20))
    for p in "abc":
        s.add_peer(p)
    now = 0.0
    for peer, op in ops:
        now += 1
        if peer not in s.peers:
            s.add_peer(peer)
        st_ = s.peers[peer]
        if op == "take":
            s.take(peer, now)
        elif op == "recv" and st_.in_flight:
            s.received(peer, next(iter(st_.in_flight)), now)
        elif op == "refuse" and st_.in_flight:
            s.refused(peer, next(iter(st_.in_flight)))
        elif op == "drop":
            s.remove_peer(peer)
    # Whatever happened, once the others' requests time out a fresh peer finishes the job.
    for p in list(s.peers):
        s.timed_out(p, now + 100, 10)
    s.add_peer("fresh")
    for _ in range(10):
        for d in s.take("fresh", now):
            s.received("fresh", d, now)
    assert s.complete


def test_a_peer_that_lacks_a_chunk_is_asked_only_for_what_it_announces() -> None:
    s = Schedule(_chunks(8))
    a, b = list(s.sizes)[:2]
    s.add_peer("fetcher")
    first = s.take("fetcher", 0.0)  # taken to hold everything at first
    s.refused("fetcher", first[0], 0.0)
    for d in first[1:]:
        s.refused("fetcher", d, 0.0)
    assert s.is_partial("fetcher") and s.take("fetcher", 1.0) == []
    query = s.to_query("fetcher")
    assert set(query) == set(s.sizes)  # subscribes to every chunk still wanted, once
    assert s.to_query("fetcher") == []
    s.has("fetcher", b)
    assert s.take("fetcher", 2.0) == [b]
    s.received("fetcher", b, 2.5)
    s.received("seed", a, 2.5)  # arrived from elsewhere: its subscription is stale
    assert a in s.stale_queries("fetcher") and b not in s.stale_queries("fetcher")


def test_a_complete_peer_is_not_asked_for_what_a_fetcher_offered() -> None:
    s = Schedule(_chunks(4))
    offered = next(iter(s.sizes))
    s.add_peer("seed")
    s.add_peer("fetcher")
    s.refused("fetcher", list(s.sizes)[3], 0.0)  # partial from now on
    s.has("fetcher", offered)
    assert offered not in s.take("seed", 0.0)
    assert s.take("fetcher", 0.0) == [offered]


def test_a_random_order_differs_between_sessions_and_repeats_for_a_seed() -> None:
    import random

    orders = [
        list(Schedule(_chunks(50), rng=random.Random(seed))._queue) for seed in ("a", "b", "a")
    ]
    assert orders[0] != orders[1] and orders[0] == orders[2]


def test_a_slow_peer_is_given_time_for_what_it_was_asked() -> None:
    s = Schedule(_chunks(40))
    s.add_peer("slow")
    s.peers["slow"].window = 8 << 20
    asked = s.take("slow", 0.0)
    s.received("slow", asked[0], 8.0)  # 1 MiB in 8 s: about 130 kB/s
    assert s.timed_out("slow", 15.0, timeout=10.0) == []  # 7 MiB more at that rate is a minute
    assert s.timed_out("slow", 200.0, timeout=10.0) != []


def test_nothing_is_unobtainable_while_a_peer_may_hold_everything() -> None:
    s = Schedule(_chunks(2))
    s.add_peer("fetcher")
    s.add_peer("seed")
    d = s.take("fetcher", 0)[0]
    s.refused("fetcher", d)
    assert s.unobtainable() == []  # the seed never said it lacks anything
    s.remove_peer("seed")
    assert d in s.unobtainable()
    s.has("fetcher", d)  # it fetched the chunk meanwhile and said so
    assert d not in s.unobtainable()


def test_a_busy_peer_rests_for_a_doubling_pause_and_its_chunk_goes_to_others() -> None:
    s = Schedule(_chunks(4))
    s.add_peer("seed")
    s.add_peer("other")
    asked = s.take("seed", 0.0)
    for d in asked:  # one pause per refusal, however many wants it answered BUSY
        s.busy("seed", d, 0.0)
    assert s.resting_until("seed") == 1.0 and s.take("seed", 0.5) == []
    assert asked[0] in s.take("other", 0.5)  # the refused chunk went back to the queue
    s.busy("seed", asked[-1], 1.5)
    assert s.resting_until("seed") == 3.5  # the pause doubled
    got = s.take("seed", 3.5)
    assert got
    s.received("seed", got[0], 4.0)
    s.busy("seed", got[-1], 4.0)
    assert s.resting_until("seed") == 5.0  # a block resets the pause


def test_a_peer_that_keeps_sending_is_not_timed_out_like_a_silent_one() -> None:
    s = Schedule(_chunks(4))
    s.add_peer("p")
    asked = s.take("p", 0.0)
    # Requests 12 s old: late if the peer was silent for the timeout, not if it spoke 1 s ago.
    assert s.timed_out("p", 12.0, timeout=10.0, heard=11.0) == []
    assert s.timed_out("p", 12.0, timeout=10.0, heard=1.0) == asked
    s2 = Schedule(_chunks(4))
    s2.add_peer("p")
    asked = s2.take("p", 0.0)
    # A peer that talks but never delivers is given STALLED timeouts, then dropped.
    assert s2.timed_out("p", 61.0, timeout=10.0, heard=60.0) == asked


def test_a_slower_peer_is_duplicated_only_when_it_has_a_while_to_go() -> None:
    def owner_and_idle(size: int) -> tuple[Schedule, list[bytes]]:
        s = Schedule(_chunks(3, size))
        s.add_peer("slow")
        s.add_peer("fast")
        s.peers["slow"].window = 64 << 20
        asked = s.take("slow", 0.0)
        s.peers["slow"].rate, s.peers["slow"].last_receive = 1e6, 0.0  # sending, at 1 MB/s
        s.peers["fast"].rate = 5e6  # and idle: 5x faster
        return s, asked

    s, asked = owner_and_idle(1 << 20)  # 3 s of work left at its rate: duplicated at once
    dup = s.take("fast", 0.1)
    assert dup and set(dup) <= set(asked)
    # 0.3 s left: it is a moment away; only silence (ENDGAME_WAIT) duplicates it.
    s, asked = owner_and_idle(100 << 10)
    assert s.take("fast", 0.1) == []
    assert s.take("fast", ENDGAME_WAIT)[0] in asked


def test_a_run_is_asked_for_whole_beyond_the_window_and_the_scan() -> None:
    """A small run, then one of RUN_CHUNKS chunks of RUN_CAP bytes in all: the first
    request holds both whole, though they pass the window and the scan, and the next
    starts a run."""
    sizes = _chunks(1 + RUN_CHUNKS + 10, RUN_CAP // RUN_CHUNKS)
    digests = list(sizes)
    s = Schedule(sizes)
    assert s.runs[digests[0]] == s.runs[digests[1]]  # cut here: the first run is full
    s = Schedule(sizes, cut=[digests[:1], digests[1 : 1 + RUN_CHUNKS]])
    s.add_peer("p")
    first = s.take("p", 0.0)
    assert first == digests[: 1 + RUN_CHUNKS]
    assert sum(sizes[d] for d in first) > MIN_WINDOW and len(first) > SCAN


def test_a_given_cut_keeps_its_runs_over_the_chunks_still_missing() -> None:
    sizes = _chunks(6, 1000)
    d = list(sizes)
    held = _chunks(8, 1000)
    extra = list(held)[6:]  # in the cut, but held already: not in `sizes`
    s = Schedule(sizes, cut=[[d[0], extra[0], d[1]], [d[1], d[2]], [extra[1]]])
    assert s.runs[d[0]] == s.runs[d[1]]  # a chunk in two runs belongs to the first
    assert s.runs[d[2]] != s.runs[d[1]]
    # Chunks the cut leaves out are cut here, together.
    assert s.runs[d[3]] == s.runs[d[4]] == s.runs[d[5]] != s.runs[d[2]]


def test_a_peer_whose_run_is_still_arriving_is_not_silent() -> None:
    """On a slow link a run's frame takes longer than ENDGAME_WAIT to come in, and its
    chunks arrive together at the end: bytes heard meanwhile keep the other peer from
    asking for the run again."""

    def midway(heard: bool) -> list[bytes]:
        s = Schedule(_chunks(8, 64 << 10))  # one run
        s.add_peer("a")
        s.add_peer("b")
        assert len(s.take("a", 0.0)) == 8
        if heard:
            s.heard("a", ENDGAME_WAIT * 1.5)
        return s.take("b", ENDGAME_WAIT * 2)

    assert midway(heard=False)  # silent: duplicated
    assert midway(heard=True) == []
