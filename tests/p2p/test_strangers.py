"""Strangers who cost a node without lying: slow readers, streams never read, data past
the flow-control window, claim floods, silent peers. Attackers are in-process libp2p
hosts built with ferry's own host code; the nodes are real processes with default
limits. Each test states the bound it holds the node to (RSS from /proc)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import TYPE_DATA, YAMUX_HEADER_FORMAT

from node.daemon import api, control
from p2p import blocks, claimwire, summary
from p2p.blocks import BlockClient, Want
from p2p.host import Notifee, make_host, quiet_libp2p
from store import build
from store.path import StorePath
from tests.p2p.nodes import NodeProc, Swarm, keys, policy
from trust.claim import sign_manifest
from trust.key import SecretKey

SP = "/nix/store/1c9wqdbw7ak1a0lcz5nh3rq3fxdvswzb-stranger-1.0"
LOCAL = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


def _tree(root: Path, size: int, seed: int = 7, sp: str = SP) -> tuple[Path, list[bytes]]:
    root.mkdir()
    (root / "big").write_bytes(random.Random(seed).randbytes(size))
    chunks: dict[bytes, None] = {}
    build.from_directory(
        str(root), StorePath.parse(sp), on_chunk=lambda d, b: chunks.setdefault(d, None)
    )
    return root, list(chunks)


def _rss_mb(node: NodeProc) -> float:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _peers(node: NodeProc) -> dict[str, api.PeerRow]:
    reply = await control.call(str(node.data_dir), api.PeersRequest())
    return {p.peer_id: p for p in reply.peers}


async def _attack(
    nodes: list[NodeProc],
    hosts: int,
    body: Callable[[list[IHost]], Awaitable[None]],
    setup: Callable[[IHost], None] = lambda host: None,
) -> list[IHost]:
    """Run `body` with `hosts` fresh libp2p hosts, each set up by `setup` and then
    connected to every node."""
    quiet_libp2p()
    made = [make_host(create_new_key_pair()) for _ in range(hosts)]
    for h in made:
        setup(h)

    async with contextlib.AsyncExitStack() as stack:
        for h in made:
            await stack.enter_async_context(h.run([LOCAL]))
            stack.push_async_callback(_close, h)  # inside run(): otherwise sockets leak
        for h in made:
            for n in nodes:
                await h.connect(info_from_p2p_addr(multiaddr.Multiaddr(n.addr)))
        await body(made)
    return made


async def _close(host: IHost) -> None:
    with trio.CancelScope(shield=True):
        await host.close()


class _OnDisconnect(Notifee):
    def __init__(self, event: trio.Event) -> None:
        self.event = event

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.event.set()


async def _open(host: IHost, node: NodeProc, protocol: str) -> INetStream:
    return await host.new_stream(ID.from_base58(node.peer_id), [TProtocol(protocol)])


async def _publishing_node(
    swarm: Swarm, tmp_path: Path, size: int
) -> tuple[NodeProc, Path, list[bytes]]:
    """A node that published SP (a tree of `size` random bytes) signed by builder-a; the
    policy trusting that key; the path's chunk digests."""
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    tree, digests = _tree(tmp_path / "tree", size)
    (node,) = await trio.to_thread.run_sync(lambda: swarm.start("node"))
    r = await trio.to_thread.run_sync(
        lambda: node.ferry(
            "publish", str(tree), "--store-path", SP, "--key", str(k["builder-a"][0])
        )
    )
    assert r.returncode == 0, r.stderr
    return node, pol, digests


async def _fetch_seconds(node: NodeProc) -> float:
    start = trio.current_time()
    await control.call(str(node.data_dir), api.FetchRequest(SP))
    return trio.current_time() - start


async def test_slow_readers_on_every_builder_leave_an_honest_fetch_its_speed(
    swarm: Swarm, tmp_path: Path
) -> None:
    """8 peers per builder ask for blocks and take about 1 KB/s: before, they held every
    upload slot with no deadline and an honest 4 MB fetch timed out at 120 s. Now each
    loses its slot after slot_stall, and the honest want waits for it rather than hear BUSY."""
    k = keys(tmp_path, "builder-a", "builder-b")
    pol = policy(tmp_path, [k["builder-a"][1], k["builder-b"][1]], threshold=2)
    tree, digests = _tree(tmp_path / "tree", 32 << 20)
    a, b = await trio.to_thread.run_sync(lambda: swarm.start("a", "b"))
    for node, name in ((a, "builder-a"), (b, "builder-b")):
        r = await trio.to_thread.run_sync(
            lambda node=node, name=name: node.ferry(
                "publish", str(tree), "--store-path", SP, "--key", str(k[name][0])
            )
        )
        assert r.returncode == 0, r.stderr
    calm, attacked = await trio.to_thread.run_sync(
        lambda: swarm.start("calm", "attacked", bootstrap=[a.addr, b.addr], policy=pol)
    )
    unattacked = await _fetch_seconds(calm)

    async def slow_readers(hosts: list[IHost]) -> None:
        started = trio.Semaphore(0)
        dropped = [0]

        async def read_slowly(host: IHost, node: NodeProc) -> None:
            first = True
            while True:  # a stream the node drops is opened again: a persistent attacker
                try:
                    stream = await _open(host, node, blocks.PROTOCOL)
                    await stream.write(BlockClient().want([Want(d) for d in digests]))
                    while await stream.read(1024):
                        if first:
                            started.release()
                            first = False
                        await trio.sleep(1.0)
                except Exception:  # reset by the node
                    dropped[0] += 1
                    if not host.get_connected_peers():
                        return  # banned
                    await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            for h in hosts:
                for n in (a, b):
                    nursery.start_soon(read_slowly, h, n)
            for _ in range(2 * len(hosts)):
                await started.acquire()  # every slot is taken
            took = await _fetch_seconds(attacked)
            nursery.cancel_scope.cancel()
        print(
            f"honest fetch: {unattacked:.2f} s unattacked, {took:.2f} s beside 16 slow readers "
            f"(their streams were dropped {dropped[0]} times meanwhile)"
        )
        # The fault this guards against cost 120 s (a timeout). A slot freed after
        # slot_stall (0.5 s) a few times over, on a 2-core machine running other tests
        # beside it, is no fault: 2.2x a 0.53 s fetch failed a bound of 2x once.
        assert took <= 2 * unattacked + 2.0, (took, unattacked)

    await _attack([a, b], 8, slow_readers)
    assert (await trio.to_thread.run_sync(lambda: attacked.ferry("verify"))).returncode == 0


async def test_data_past_the_window_disconnects_the_sender(swarm: Swarm) -> None:
    """Before: py-libp2p buffered it without limit (a builder went from 382 MB to 1.9 GB)."""
    (node,) = await trio.to_thread.run_sync(lambda: swarm.start("node"))
    before = _rss_mb(node)

    async def overrun(hosts: list[IHost]) -> None:
        (host,) = hosts
        gone = trio.Event()
        host.get_network().register_notifee(_OnDisconnect(gone))
        stream = await _open(host, node, claimwire.PROTOCOL)
        muxed = stream.muxed_stream
        conn = muxed.conn  # type: ignore[attr-defined]
        # A request answered, after which the node reads the stream no more: all that
        # stands between it and the flood is the window.
        await stream.write(claimwire.encode(claimwire.Get("0" * 32)))
        with contextlib.suppress(StreamEOF):
            while await stream.read(1 << 16):
                pass
        payload = b"\0" * (1 << 20)
        with trio.move_on_after(30):
            for _ in range(256):  # 256 MiB, 1,000 times the window
                header = struct.pack(
                    YAMUX_HEADER_FORMAT,
                    0,
                    TYPE_DATA,
                    0,
                    muxed.stream_id,  # type: ignore[attr-defined]
                    len(payload),
                )
                try:
                    await conn.secured_conn.write(header + payload)  # past flow control
                except Exception:
                    break
        with trio.fail_after(10):
            await gone.wait()

    (host,) = await _attack([node], 1, overrun)
    row = (await _peers(node))[str(host.get_id())]
    assert row.banned_for > 0 and not row.connected and "window" in (row.last_problem or ""), row
    grew = _rss_mb(node) - before
    print(f"RSS {before:.0f} MB before, +{grew:.0f} MB after 256 MiB sent past the window")
    assert grew < 64, grew
    await control.call(str(node.data_dir), api.StatusRequest())


async def test_two_hundred_unread_streams_cost_a_bounded_amount(
    swarm: Swarm, tmp_path: Path
) -> None:
    """200 streams each asking for 64 real chunks and never reading. Before: +1.4 GB of
    RSS that stayed, `ferry status` in 19 s."""
    node, pol, digests = await _publishing_node(swarm, tmp_path, 48 << 20)
    before = _rss_mb(node)
    peak = before
    status_seconds = 0.0

    async def unread(hosts: list[IHost]) -> None:
        nonlocal peak, status_seconds
        (host,) = hosts
        wants = [digests[i % len(digests) : i % len(digests) + 64] for i in range(0, 200 * 64, 64)]
        opened = 0
        for some in wants:
            try:
                stream = await _open(host, node, blocks.PROTOCOL)
                await stream.write(BlockClient().want([Want(d) for d in some]))
                opened += 1
            except Exception:  # reset, or disconnected: the limits at work
                if not host.get_connected_peers():
                    break  # banned
            peak = max(peak, _rss_mb(node))
        for _ in range(10):
            start = trio.current_time()
            await control.call(str(node.data_dir), api.StatusRequest())
            status_seconds = max(status_seconds, trio.current_time() - start)
            peak = max(peak, _rss_mb(node))
            await trio.sleep(0.2)
        print(f"{opened} streams opened before the node stopped taking them")

    (host,) = await _attack([node], 1, unread)
    row = (await _peers(node))[str(host.get_id())]
    print(
        f"RSS {before:.0f} MB before, peak {peak:.0f} MB; status answered in {status_seconds:.2f} s"
    )
    assert peak - before < 100, (before, peak)
    assert status_seconds < 1.0
    assert row.banned_for > 0 and not row.connected, row
    # An honest fetch is served as before.
    (client,) = await trio.to_thread.run_sync(
        lambda: swarm.start("client", bootstrap=[node.addr], policy=pol)
    )
    await _fetch_seconds(client)


async def test_a_claim_flood_before_publication_censors_nothing(
    swarm: Swarm, tmp_path: Path
) -> None:
    """300 claims for the path by throwaway keys, pushed to every node before the
    builders publish. Before: answers carried the first 256 by row id, and a late joiner
    found `0 of the 2 agreeing signatures`."""
    k = keys(tmp_path, "builder-a", "builder-b")
    pol = policy(tmp_path, [k["builder-a"][1], k["builder-b"][1]], threshold=2)
    tree, _ = _tree(tmp_path / "tree", 1 << 20)
    junk_tree = tmp_path / "junk"
    junk_tree.mkdir()
    (junk_tree / "big").write_bytes(b"junk")
    junk_manifest = build.from_directory(str(junk_tree), StorePath.parse(SP))
    junk = [
        sign_manifest(junk_manifest, SecretKey.generate(f"junk-{i}")).encode() for i in range(300)
    ]
    a, b = await trio.to_thread.run_sync(lambda: swarm.start("a", "b"))
    (relay,) = await trio.to_thread.run_sync(
        lambda: swarm.start("relay", bootstrap=[a.addr, b.addr], policy=pol)
    )

    async def flood(hosts: list[IHost]) -> None:
        (host,) = hosts
        for node in (a, b, relay):
            for i in range(0, len(junk), claimwire.MAX_CLAIMS):
                stream = await _open(host, node, claimwire.PROTOCOL)
                await stream.write(claimwire.encode(claimwire.Push(tuple(junk[i : i + 256]))))
                await stream.read(64)
                await stream.close()

    await _attack([a, b, relay], 1, flood)
    for node, name in ((a, "builder-a"), (b, "builder-b")):
        r = await trio.to_thread.run_sync(
            lambda node=node, name=name: node.ferry(
                "publish", str(tree), "--store-path", SP, "--key", str(k[name][0])
            )
        )
        assert r.returncode == 0, r.stderr
    (late,) = await trio.to_thread.run_sync(
        lambda: swarm.start(
            "late", bootstrap=[relay.addr, a.addr, b.addr], policy=pol, config="gossip = false\n"
        )
    )
    got = await control.call(str(late.data_dir), api.FetchRequest(SP))
    assert got.progress.paths == 1
    # The relay kept no more than the budget of claims by keys outside its policy.
    db = sqlite3.connect(f"file:{relay.data_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        (kept,) = db.execute("SELECT count(*) FROM claims WHERE store_path = ?", (SP,)).fetchone()
    finally:
        db.close()
    print(f"the relay keeps {kept} claims for the flooded path")
    assert kept <= 32 + 2, kept


async def test_a_silent_peer_is_asked_last_then_dropped(swarm: Swarm, tmp_path: Path) -> None:
    """A connected peer that takes claims requests and never answers. Before: every
    request waited the full claims timeout, and the peer stayed for ever."""
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    other = "/nix/store/2c9wqdbw7ak1a0lcz5nh3rq3fxdvswzb-stranger-2.0"
    tree, _ = _tree(tmp_path / "tree", 1 << 20)
    tree2, _ = _tree(tmp_path / "tree2", 1 << 20, seed=8, sp=other)
    (seed,) = await trio.to_thread.run_sync(lambda: swarm.start("seed"))
    for t, sp in ((tree, SP), (tree2, other)):
        r = await trio.to_thread.run_sync(
            lambda t=t, sp=sp: seed.ferry(
                "publish", str(t), "--store-path", sp, "--key", str(k["builder-a"][0])
            )
        )
        assert r.returncode == 0, r.stderr
    # A short claims timeout: every request to the silent peer waits it out.
    (client,) = await trio.to_thread.run_sync(
        lambda: swarm.start(
            "client", bootstrap=[seed.addr], policy=pol, config="claims_timeout = 1.5\n"
        )
    )

    unknown = [f"/nix/store/{'3' * 31}{i}-nothing" for i in range(6)]

    def silent_peer(host: IHost) -> None:
        async def never_answer(stream: INetStream) -> None:
            await trio.sleep_forever()  # read nothing, answer nothing, keep it open

        async def claims_everything(stream: INetStream) -> None:
            hashes = [StorePath.parse(p).hash_part for p in (SP, other, *unknown)]
            await stream.write(summary.encode(summary.Add(frozenset(map(summary.key, hashes)))))
            await stream.write(summary.encode(summary.Synced()))
            await trio.sleep_forever()

        host.set_stream_handler(TProtocol(claimwire.PROTOCOL), never_answer)
        host.set_stream_handler(TProtocol(claimwire.PROTOCOL_GETS), never_answer)
        host.set_stream_handler(TProtocol(summary.PROTOCOL), claims_everything)

    async def silent(hosts: list[IHost]) -> None:
        (host,) = hosts
        first = await _fetch_seconds(client)
        start = trio.current_time()
        await control.call(str(client.data_dir), api.FetchRequest(other))
        second = trio.current_time() - start
        print(f"first fetch {first:.2f} s (waits for the silent peer), second {second:.2f} s")
        assert second < first and second < 1.5, (first, second)
        # Asked when nobody else settles a path (unknown hashes): it times out each
        # time, and is dropped after its strikes.
        for path in unknown:
            try:
                await control.call(str(client.data_dir), api.FetchRequest(path))
            except control.ControlError:
                pass
            if not host.get_connected_peers():
                break
        row = (await _peers(client))[str(host.get_id())]
        assert row.banned_for > 0 and not row.connected, row

    await _attack([client], 1, silent, silent_peer)


async def test_a_gateway_client_that_leaves_stops_its_nar(swarm: Swarm, tmp_path: Path) -> None:
    """Before: a NAR kept streaming to a client that had gone (5.2 GB served to 100 of them)."""
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    tree, _ = _tree(tmp_path / "tree", 64 << 20)
    (node,) = await trio.to_thread.run_sync(lambda: swarm.start("node", policy=pol))
    r = await trio.to_thread.run_sync(
        lambda: node.ferry(
            "publish", str(tree), "--store-path", SP, "--key", str(k["builder-a"][0])
        )
    )
    assert r.returncode == 0, r.stderr
    host, port = node.gateway_url.removeprefix("http://").rsplit(":", 1)

    async def get(target: str) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return stream

    info = b""
    stream = await get(f"/{StorePath.parse(SP).hash_part}.narinfo")
    while b"\nSig:" not in info:
        info += await stream.receive_some(65536)
    await stream.aclose()
    url = next(line for line in info.decode().splitlines() if line.startswith("URL: "))[5:]
    stream = await get("/" + url)
    received = 0
    while received < 1 << 20:
        received += len(await stream.receive_some(65536))
    await stream.aclose()
    await trio.to_thread.run_sync(lambda: node.wait_log("the client left; serving it stopped"))
    metrics = await get("/metrics")
    text = b""
    while chunk := await metrics.receive_some(65536):
        text += chunk
        if b"ferry_gateway_served_bytes_total " in text and text.endswith(b"\n"):
            break
    await metrics.aclose()
    served = next(
        float(line.split()[1])
        for line in text.decode().splitlines()
        if line.startswith("ferry_gateway_served_bytes_total ")
    )
    print(f"served {served / 2**20:.1f} MiB of a 64 MiB NAR to a client that read 1 MiB")
    assert served < 32 << 20, served


async def test_a_thousand_streams_and_ten_thousand_wants_are_held_to_the_limits(
    swarm: Swarm, tmp_path: Path
) -> None:
    """One stranger opens 1,000 blocks streams, 10 wants each, and reads nothing; another
    sends 10,000 wants on one stream. Meanwhile an honest node fetches a path. The node
    takes 128 streams (streams_per_peer) and bans the first; it sends the second what one
    stream's window holds, then resets the stream with a strike; its RSS stays bounded,
    and the honest fetch completes."""
    node, pol, digests = await _publishing_node(swarm, tmp_path, 24 << 20)
    (client,) = await trio.to_thread.run_sync(
        lambda: swarm.start("client", bootstrap=[node.addr], policy=pol)
    )
    before = peak = _rss_mb(node)
    opened = 0
    fetched: list[float] = []

    async def crowd(hosts: list[IHost]) -> None:
        nonlocal opened, peak
        streams_host, wants_host = hosts

        async def honest() -> None:
            fetched.append(await _fetch_seconds(client))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(honest)
            for i in range(1000):
                some = [digests[(i * 10 + j) % len(digests)] for j in range(10)]
                try:
                    stream = await _open(streams_host, node, blocks.PROTOCOL)
                    await stream.write(BlockClient().want([Want(d) for d in some]))
                    opened += 1
                except Exception:  # reset, or disconnected: the limits at work
                    if not streams_host.get_connected_peers():
                        break  # banned
                if i % 50 == 0:
                    peak = max(peak, _rss_mb(node))
            # 10,000 wants in frames of 500 on one stream, never read.
            stream = await _open(wants_host, node, blocks.PROTOCOL)
            with contextlib.suppress(Exception):  # reset once past the cap
                for i in range(0, 10_000, 500):
                    some = [digests[(i + j) % len(digests)] for j in range(500)]
                    await stream.write(BlockClient().want([Want(d) for d in some]))
            peak = max(peak, _rss_mb(node))
            # The node serves what fits the stream's window, then, the window staying shut,
            # resets the stream and counts a strike. No event tells the stranger: look.
            for _ in range(150):
                row = (await _peers(node)).get(str(wants_host.get_id()))
                if row is not None and row.bad:
                    break
                await trio.sleep(0.1)
            peak = max(peak, _rss_mb(node))

    hosts = await _attack([node], 2, crowd)
    rows = await _peers(node)
    print(
        f"{opened} of 1000 streams taken before the ban; RSS {before:.0f} MB before, peak "
        f"{peak:.0f} MB; the honest fetch took {fetched[0]:.1f} s"
    )
    streams_row, wants_row = (rows[str(h.get_id())] for h in hosts)
    # The stranger counts a stream once its write went out, which may be before the
    # node's reset arrives: the node's own reason says where it stopped.
    assert opened < 1000 and streams_row.banned_for > 0, streams_row
    assert "opened more than 128 streams" in (streams_row.last_problem or ""), streams_row
    assert wants_row.bad >= 1 and "window" in (wants_row.last_problem or ""), wants_row
    assert wants_row.sent_bytes <= 8 << 20, (
        wants_row
    )  # what one reply's window holds, not 10,000 chunks
    assert peak - before < 150, (before, peak)
    assert len(fetched) == 1
    assert client.ferry("verify").returncode == 0
