"""Upload slots and the want-have index: the pure parts, and a crowd served through one
slot over the simulator's streams (real Fetch, real block server)."""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio
import trio.testing

from node.exchange import server
from node.exchange.fetch import Fetch, FetchSettings
from node.exchange.memory import MemoryStore
from node.exchange.server import serve_blocks, serve_claims
from node.exchange.subscriptions import Subscriptions
from node.exchange.uplink import Uplink
from p2p import claimwire
from p2p.blocks import PROTOCOL as BLOCKS
from sim.content import key, release
from sim.host import World
from trust.claim import sign_manifest
from trust.policy import QuorumPolicy


def test_slots_are_held_per_peer_until_released() -> None:
    u = Uplink(slots=2)
    a1, a2, b = u.admit("a"), u.admit("a"), u.admit("b")
    assert a1 and a2 and b  # a peer's streams share its slot
    assert not u.admit("c") and u.turned_away == 1
    a1.finish()
    assert not u.admit("c")  # "a" still has a reply on the way
    a2.finish()
    a2.finish()  # finishing twice changes nothing
    c = u.admit("c")
    assert c and u.busy == 2
    with pytest.raises(ValueError):
        Uplink(slots=0)


def test_a_stalled_reply_gives_up_its_slot_and_its_peer_waits() -> None:
    u = Uplink(slots=1)
    slow = u.admit("slow")
    assert slow and not u.admit("fast")
    slow.carry(10)
    assert slow.stall() and u.in_flight == 0  # its bytes no longer hold others back
    fast = u.admit("fast")
    assert fast and u.busy == 1
    fast.finish()
    assert not u.admit("slow")  # no new turn while it has not taken the last one
    slow.finish()
    assert u.admit("slow")


def test_replies_are_capped_per_peer_and_in_bytes() -> None:
    u = Uplink(slots=8, replies_per_peer=2, reply_bytes=100)
    t1, t2 = u.admit("a"), u.admit("a")
    assert t1 and t2 and not u.admit("a")
    t1.carry(60)
    t2.carry(60)
    assert u.in_flight == 120 and not u.admit("b")  # over the byte cap: BUSY for all
    t1.finish()
    assert u.in_flight == 60
    assert u.admit("b")


async def test_a_landing_chunk_wakes_only_its_subscribers() -> None:
    book = Subscriptions()
    a, b = book.subscriber(), book.subscriber()
    x, y = b"x" * 32, b"y" * 32
    a.watch([x])
    b.watch([y])
    book.stored([x])
    assert await a.wait() == ({x}, False)
    assert not b.ready and len(book) == 1
    b.unwatch([y])
    assert len(book) == 0
    b.watch([y])
    book.stored(None)  # the store cannot say which: every subscriber looks
    assert await b.wait() == (set(), True)
    b.close()
    assert len(book) == 0


async def test_a_crowd_through_one_upload_slot_completes_and_hears_busy(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Want-blocks are answered BUSY at once, not after waiting for the slot to free.
    monkeypatch.setattr(server, "SLOT_WAIT", 0.0)
    rng = random.Random(3)
    rel = release(rng, paths=2, real_bytes=40 * 4096)
    builder = key(rng, "builder")
    seed = MemoryStore()
    for p in rel.paths:
        seed.add_path(p.manifest, p.chunks, [sign_manifest(p.manifest, builder)])
    uplink = Uplink(slots=1)
    stores = [MemoryStore() for _ in range(4)]
    async with trio.open_nursery() as nursery:
        world = World(nursery, rng)
        srv = world.add("seed")
        punished: list[str] = []

        async def violation(peer: str, problem: str) -> None:
            punished.append(problem)

        srv.handlers[BLOCKS] = lambda s, peer: serve_blocks(
            s, peer, seed, violation, lambda n, b: None, uplink
        )
        srv.handlers[claimwire.PROTOCOL] = lambda s, peer: serve_claims(s, peer, seed, violation)
        hosts = [world.add(f"f{i}") for i in range(len(stores))]
        for h in hosts:
            h.connect("seed")
        policy = QuorumPolicy((builder.public,), 1)
        with trio.fail_after(600):
            async with trio.open_nursery() as crowd:
                for h, st in zip(hosts, stores):
                    fetch = Fetch(h, st, policy, FetchSettings(request_timeout=5))
                    crowd.start_soon(partial(fetch.run, rel.root, closure=True))
        nursery.cancel_scope.cancel()
    assert uplink.turned_away > 0 and uplink.busy == 0
    assert not punished and not any(h.punished for h in hosts)
    for st in stores:
        assert all(st.complete(p.manifest.store_path) for p in rel.paths)


def test_slow_replies_are_capped_and_the_one_past_the_cap_is_dropped() -> None:
    u = Uplink(slots=8, slow_replies=1)
    a, b = u.admit("a"), u.admit("b")
    assert a and b
    assert a.stall()
    assert not b.stall()  # the uplink keeps one slow reply: the second is to be dropped
    b.finish()
    assert u.admit("b")  # dropped, not held against it
    a.finish()
    assert u.slow == 0 and u.admit("a")


async def test_a_turn_waited_for_is_given_when_one_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    u = Uplink(slots=1)
    held = u.admit("a")
    assert held

    async def end_soon() -> None:
        await trio.sleep(0.2)
        held.stall()  # a reader that stopped frees its slot

    async with trio.open_nursery() as nursery:
        nursery.start_soon(end_soon)
        turn = await u.wait_turn("b", patience=0.5)
    assert turn and trio.current_time() == pytest.approx(0.2) and u.turned_away == 0
    assert await u.wait_turn("c", patience=0.5) is None and u.turned_away == 1
