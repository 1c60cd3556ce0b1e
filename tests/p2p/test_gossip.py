"""Claims gossip (gossipsub) between real py-libp2p hosts on loopback."""

from __future__ import annotations

import contextlib

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.daemon.discovery import GOSSIP_TOPIC, start_gossip
from tests.p2p.hosts import two_hosts


async def test_a_peer_joining_later_is_not_sent_every_message_ever_published() -> None:
    """The router's heartbeat runs: its message cache forgets what is a few heartbeats
    old, and a new subscriber gets only what is published after it joins. (Without the
    router running as a service, a node replayed every claim it had ever seen to each
    peer that joined: most of the bytes of a small update.)"""
    async with contextlib.AsyncExitStack() as stack:
        a, b = await two_hosts(stack)
        pub_a, router_a = await start_gossip(a, stack)
        pub_b, _ = await start_gossip(b, stack)
        await pub_a.subscribe(GOSSIP_TOPIC)
        for i in range(20):
            await pub_a.publish(GOSSIP_TOPIC, b"old claim %d" % i)
        # Heartbeats shift the cache: after as many as its window, the old claims are out.
        shifted, grafted = trio.Event(), trio.Event()
        shift = router_a.mcache.shift
        beats = 0

        def counted() -> None:
            # Called at the end of each heartbeat, after the mesh is maintained.
            nonlocal beats
            shift()
            beats += 1
            if beats >= router_a.mcache.window_size:
                shifted.set()
            if b.get_id() in router_a.mesh.get(GOSSIP_TOPIC, set()):
                grafted.set()

        router_a.mcache.shift = counted  # type: ignore[method-assign]
        with trio.fail_after(15):  # heartbeats come every second
            await shifted.wait()
        assert router_a.mcache.window(GOSSIP_TOPIC) == []
        sub = await pub_b.subscribe(GOSSIP_TOPIC)
        await b.connect(info_from_p2p_addr(a.get_addrs()[0].encapsulate(f"/p2p/{a.get_id()}")))
        await pub_a.wait_for_subscription(b.get_id(), GOSSIP_TOPIC, timeout=15)
        # Published before a heartbeat grafts b into a's mesh, a message reaches nobody
        # (and gossip about it goes only to peers outside the mesh).
        with trio.fail_after(15):
            await grafted.wait()
        await pub_a.publish(GOSSIP_TOPIC, b"new claim")
        with trio.fail_after(15):
            first = await sub.get()
        assert first.data == b"new claim"
