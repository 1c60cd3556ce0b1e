"""A fetch session against servers whose diffs go wrong: made against other bases than the
ones asked for, damaged on the way, or never made because the server lacks the bases.
Each time the session asks again for the chunk plain, stores only chunks that hash
right, and ends with exactly version 2. Real Fetch, real block codec and server, over
the simulator's in-memory streams."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import trio

from node.exchange.fetch import Fetch, FetchSettings
from node.exchange.memory import MemoryStore
from node.exchange.packing import RunHints
from node.exchange.server import serve_blocks, serve_claims
from p2p import claimwire
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.blocks import Block, BlockServer, Packed, Reply, pack
from sim.host import World
from store import build, export
from store.path import StorePath
from trust.claim import sign_manifest
from trust.key import SecretKey
from trust.policy import QuorumPolicy

V1 = StorePath("/nix/store", "a" * 32, "tool-1.0")
V2 = StorePath("/nix/store", "b" * 32, "tool-1.1")


def _tree(root: Path, v: int) -> Path:
    rnd = random.Random(7)
    binary = bytearray(rnd.randbytes(2 << 20))
    if v == 2:
        binary[70_000:70_000] = b"inserted" * 50
        binary[1_500_000:1_500_016] = b"patched constant"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(bytes(binary))
    return root


class Lying(MemoryStore):
    """Serves plain blocks honestly; spoils every diff in the way `how` says."""

    how = "honest"
    spoiled = 0  # diffs sent spoiled

    async def encode_reply(self, replies: list[Reply], hints: RunHints) -> bytes:
        diffs = [r for r in replies if isinstance(r, Block) and r.digest in hints.bases]
        diffs = [r for r in diffs if all(b in hints.have for b in hints.bases[r.digest])]
        have = hints.have
        packer = None
        if self.how in ("wrong-base", "damaged"):
            self.spoiled += len(diffs)
        if self.how == "wrong-base":
            # Bases one byte off what the client holds: every match decodes to other bytes.
            have = {d: p[1:] + p[:1] for d, p in have.items()}
        if self.how == "damaged":
            # Well-framed replies whose diff payloads are damaged half-way through.
            def packer(blocks: list[Block], prefix: bytes) -> Packed:
                packed = pack(blocks, level=self.diff_level, prefix=prefix)
                if not prefix:
                    return packed
                z = bytearray(packed.payload)
                z[len(z) // 2] ^= 0x55
                return dataclasses.replace(packed, payload=bytes(z))

        return BlockServer.reply(
            replies,
            bases=hints.bases,
            have=have,
            group=hints.groups,
            diff_level=self.diff_level,
            packer=packer,
        )


@pytest.mark.parametrize("how", ["honest", "wrong-base", "damaged", "lacks-base"])
async def test_a_spoiled_diff_is_asked_for_plain_and_nothing_unverified_is_stored(
    how: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    key = SecretKey.generate("builder-1")
    versions = {}
    for sp, v in ((V1, 1), (V2, 2)):
        chunks = export.MemoryChunks()
        m = build.from_directory(
            str(_tree(tmp_path / f"v{v}", v)), sp, on_chunk=chunks.add, workers=0
        )
        versions[sp] = (m, chunks.chunks, sign_manifest(m, key))
    server = Lying()
    server.how = how
    client = MemoryStore()
    for sp, (m, chunks, claim) in versions.items():
        if not (how == "lacks-base" and sp == V1):
            server.add_path(m, chunks, [claim])
    client.add_path(versions[V1][0], versions[V1][1], [versions[V1][2]])

    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")

        async def violation(peer: str, problem: str) -> None:
            await srv.punish(peer, problem)

        srv.handlers[BLOCKS] = lambda s, peer: serve_blocks(
            s, peer, server, violation, lambda n, b: None
        )
        srv.handlers[claimwire.PROTOCOL] = lambda s, peer: serve_claims(s, peer, server, violation)
        cli.connect("server")
        fetch = Fetch(cli, client, QuorumPolicy((key.public,), 1), FetchSettings(request_timeout=5))
        with trio.fail_after(60):
            await fetch.run(V2)
        nursery.cancel_scope.cancel()

    m2, chunks2, _ = versions[V2]
    assert all(client.chunks[d] == chunks2[d] for d in m2.chunk_digests())
    assert client.counters.rejected_chunks == 0  # the session never handed over a bad chunk
    assert cli.punished == []  # spoiled diffs are asked for again, not held against the peer
    p = fetch.progress
    assert p.deduplicated_chunks > 0  # the chunks before the insertion were already here
    if how == "honest":
        assert p.diff_chunks > 0 and p.diff_received_bytes < 16 << 10
    else:
        assert server.spoiled > 0 or how == "lacks-base"
        assert p.diff_chunks == 0  # nothing counted as a diff unless it verified
        assert p.received_bytes > 512 << 10  # the changed chunks came plain
