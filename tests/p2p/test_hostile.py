"""Peers that lie, stall or speak garbage, played by in-process libp2p hosts against
real node processes. The node must finish from honest peers, store no bad byte, drop
the offender, and keep running."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import msgpack
import multiaddr
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from node.daemon import api, control
from p2p import blocks, claimwire, frame
from p2p.blocks import Block, BlockServer
from p2p.host import make_host, quiet_libp2p
from store import build
from store.path import StorePath
from tests.p2p.nodes import NodeProc, Swarm, keys, policy

SP = "/nix/store/0c9wqdbw7ak1a0lcz5nh3rq3fxdvswzb-hostile-1.0"
LOCAL = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


def _tree(root: Path, size: int) -> tuple[Path, dict[bytes, bytes]]:
    root.mkdir()
    (root / "big").write_bytes(random.Random(7).randbytes(size))
    chunks: dict[bytes, bytes] = {}
    build.from_directory(
        str(root), StorePath.parse(SP), on_chunk=lambda d, b: chunks.setdefault(d, bytes(b))
    )
    return root, chunks


def _evil_server(mode: str, chunks: dict[bytes, bytes], asked: list[int]):
    async def handler(stream) -> None:
        server = BlockServer()
        while True:
            try:
                data = await stream.read(1 << 20)
            except Exception:
                return
            if not data:
                return
            server.receive_data(data)
            wants = server.take(10_000)
            asked.append(len(wants))
            if mode == "silent":
                continue
            replies = []
            for w in wants:
                real = chunks.get(w.digest, b"x" * 100)
                if mode == "corrupt":
                    bad = bytearray(real)
                    bad[len(bad) // 2] ^= 0xFF
                    replies.append(Block(w.digest, bytes(bad)))
                else:  # wrong size: a well-formed block, one byte too long
                    replies.append(Block(w.digest, real + b"!"))
            try:
                await stream.write(BlockServer.reply(replies))
            except Exception:
                return

    return handler


async def _no_claims(stream) -> None:
    await stream.read(1 << 16)
    await stream.write(claimwire.encode(claimwire.Claims(())))
    await stream.close()


@pytest.mark.parametrize("mode", ["corrupt", "wrong-size", "silent"])
async def test_bad_block_peer_is_dropped_and_fetch_completes(
    swarm: Swarm, tmp_path: Path, mode: str
) -> None:
    quiet_libp2p()
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    tree, chunks = _tree(tmp_path / "tree", (96 if mode == "silent" else 32) << 20)
    (seed,) = await trio.to_thread.run_sync(lambda: swarm.start("seed"))
    (client,) = await trio.to_thread.run_sync(
        lambda: swarm.start(
            "client", bootstrap=[seed.addr], policy=pol, timeout=0.5 if mode == "silent" else 2
        )
    )
    await trio.to_thread.run_sync(
        lambda: seed.json("publish", str(tree), "--store-path", SP, "--key", str(k["builder-a"][0]))
    )

    evil = make_host(create_new_key_pair())
    asked: list[int] = []
    evil.set_stream_handler(TProtocol(blocks.PROTOCOL), _evil_server(mode, chunks, asked))
    evil.set_stream_handler(TProtocol(claimwire.PROTOCOL), _no_claims)
    async with evil.run([LOCAL]):
        try:
            await evil.connect(info_from_p2p_addr(multiaddr.Multiaddr(client.addr)))
            got = await control.call(str(client.data_dir), api.FetchRequest(SP))
            assert asked, "the hostile peer was never asked for anything"
            peers = await _peers(client)
            bad = peers[str(evil.get_id())]
            assert bad.bad == 1 and bad.banned_for > 0 and not bad.connected, bad
            assert str(evil.get_id()) not in got.progress.per_peer
            assert got.progress.per_peer[seed.peer_id] == got.progress.bytes_done
        finally:
            await evil.close()
    assert client.stop() == 0
    # No bad byte stored: every chunk verifies, and the NAR equals the builder's.
    assert (await trio.to_thread.run_sync(lambda: client.ferry("verify"))).returncode == 0
    out, ref = tmp_path / "out.nar", tmp_path / "ref.nar"
    assert client.ferry("export", SP, "-o", str(out)).returncode == 0
    assert seed.stop() == 0
    assert seed.ferry("export", SP, "-o", str(ref)).returncode == 0
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 0xFFFF_FFF0),  # a frame header far over the cap
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",  # 0xc1 is never valid msgpack
        frame.encode(msgpack.packb([0, [[b"short", True, []]]])),  # a digest of the wrong size
    ],
    ids=["oversized-frame", "malformed-msgpack", "bad-digest"],
)
async def test_protocol_garbage_disconnects_without_crashing(
    swarm: Swarm, tmp_path: Path, garbage: bytes
) -> None:
    quiet_libp2p()
    (node,) = await trio.to_thread.run_sync(lambda: swarm.start("node"))
    rogue = make_host(create_new_key_pair())
    async with rogue.run([LOCAL]):
        try:
            await rogue.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addr)))
            stream = await rogue.new_stream(
                info_from_p2p_addr(multiaddr.Multiaddr(node.addr)).peer_id,
                [TProtocol(blocks.PROTOCOL)],
            )
            await stream.write(garbage)
            with trio.fail_after(10):
                try:
                    while await stream.read(1 << 16):
                        pass
                except Exception:  # reset by the node: expected
                    pass
        finally:
            await rogue.close()
    status = await control.call(str(node.data_dir), api.StatusRequest())
    assert status.peer_id == node.peer_id  # still alive and answering
    peers = await _peers(node)
    rec = peers[str(rogue.get_id())]
    assert rec.bad == 1 and rec.banned_for > 0 and not rec.connected, rec


async def test_plaintext_dialer_cannot_connect(swarm: Swarm) -> None:
    quiet_libp2p()
    from libp2p import new_host

    (node,) = await trio.to_thread.run_sync(lambda: swarm.start("node"))
    kp = create_new_key_pair()
    plain = new_host(key_pair=kp, sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)})
    async with plain.run([LOCAL]):
        try:
            with trio.fail_after(30):
                with pytest.raises(Exception):
                    await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addr)))
            assert not plain.get_connected_peers()
        finally:
            await plain.close()
    peers = await control.call(str(node.data_dir), api.PeersRequest())
    assert peers.peers == ()


async def _peers(node: NodeProc) -> dict[str, api.PeerRow]:
    reply = await control.call(str(node.data_dir), api.PeersRequest())
    return {p.peer_id: p for p in reply.peers}
