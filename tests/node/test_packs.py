"""Runs packed ahead (`node.local.packs`): the pack file format, the store of them, and a
cold fetch answered from them. Real Fetch and block server over the simulator's streams."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from node.exchange.fetch import Fetch, FetchSettings
from node.exchange.memory import MemoryStore
from node.exchange.packing import CACHE_FROM, Packer, run_key
from node.exchange.schedule import RUN_CHUNKS, cold_runs
from node.exchange.server import serve_blocks, serve_claims
from node.local.packs import PackError, PackFile, PackStore
from p2p import claimwire
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.blocks import Block, Codec, Packed
from sim.host import World
from store import build, export
from store.manifest import Manifest
from store.path import StorePath
from trust.claim import sign_manifest
from trust.key import SecretKey
from trust.policy import QuorumPolicy

SP = StorePath("/nix/store", "6bgvc3ilnkyjcnxz9xh2k0ym0wv9pwxl", "packed-1.0")

packed = st.builds(
    lambda blocks, codec, payload: Packed(tuple(blocks), codec, payload),
    st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 1 << 16)), min_size=1),
    st.sampled_from(Codec),
    st.binary(),
)


@given(packed)
def test_a_pack_file_decodes_to_what_was_encoded(p: Packed) -> None:
    assert PackFile.decode(PackFile(p).encode()).packed == p


@given(st.binary(max_size=200))
def test_anything_else_is_refused_with_a_pack_error(data: bytes) -> None:
    try:
        PackFile.decode(data)
    except PackError:
        pass


def test_the_store_keeps_the_newest_under_its_cap_and_drops_damaged_packs(tmp_path: Path) -> None:
    one = Packed(((b"\x01" * 32, 10),), Codec.XZ, b"x" * 1000)
    size = len(PackFile(one).encode())
    packs = PackStore(tmp_path / "packs", cap=3 * size)
    keys = [bytes([i]) * 32 for i in range(5)]
    for k in keys:
        assert packs.put(k, one)
    assert len(packs) == 3 and packs.bytes == 3 * size
    assert [k in packs for k in keys] == [False, False, True, True, True]
    (tmp_path / "packs" / keys[2].hex()).write_bytes(b"damaged")
    assert packs.get(keys[2]) is None and keys[2] not in packs
    assert packs.get(keys[3]) == one
    (tmp_path / "packs" / "half-written.tmp").write_bytes(b"x")
    again = PackStore(tmp_path / "packs", cap=3 * size)  # what a restart finds
    assert len(again) == 2 and not (tmp_path / "packs" / "half-written.tmp").exists()


def _tree(root: Path) -> Path:
    """Compressible files: one of several runs, and many small ones (runs of files)."""
    rnd = random.Random(5)
    words = [rnd.randbytes(6).hex().encode() for _ in range(2000)]
    root.mkdir()
    (root / "big").write_bytes(b" ".join(rnd.choice(words) for _ in range(700_000)))
    for i in range(300):
        (root / f"small{i}").write_bytes(b" ".join(rnd.choice(words) for _ in range(300)))
    return root


async def test_a_cold_fetch_is_answered_with_the_runs_packed_ahead(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder = SecretKey.generate("builder-1")
    chunks = export.MemoryChunks()
    m = build.from_directory(str(_tree(tmp_path / "t")), SP, on_chunk=chunks.add, workers=0)
    server = MemoryStore(packer=Packer(packs=PackStore(tmp_path / "packs", cap=1 << 30)))
    server.add_path(m, chunks.chunks, [sign_manifest(m, builder)])
    runs = [r for r in cold_runs(m) if len(r) >= CACHE_FROM]
    assert len(runs) >= 4 and max(len(r) for r in runs) == RUN_CHUNKS
    assert server.packer is not None
    for run in runs:
        assert server.packer.pack_ahead([Block(d, chunks.chunks[d]) for d in run])
    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")

        async def violation(peer: str, problem: str) -> None:
            raise AssertionError(problem)

        srv.handlers[BLOCKS] = lambda s, peer: serve_blocks(
            s, peer, server, violation, lambda n, b: None
        )
        srv.handlers[claimwire.PROTOCOL] = lambda s, peer: serve_claims(s, peer, server, violation)
        cli.connect("server")
        client = MemoryStore()
        fetch = Fetch(cli, client, QuorumPolicy((builder.public,), 1), FetchSettings())
        with trio.fail_after(60):
            await fetch.run(SP)
        nursery.cancel_scope.cancel()
    assert all(client.chunks[d] == chunks.chunks[d] for d in m.chunk_digests())
    # Every run went as its pack: the client asked for each whole, in one request.
    assert server.packer.pack_hits == len(runs)


def test_a_run_not_packed_ahead_is_not_found(tmp_path: Path) -> None:
    packer = Packer(packs=PackStore(tmp_path / "packs", cap=1 << 20))
    blocks = [Block(bytes([i]) * 32, b"data %d" % i) for i in range(CACHE_FROM)]
    assert packer.packed_ahead(blocks) is None
    assert packer.pack_ahead(blocks)
    assert run_key([b.digest for b in blocks]) in packer.packs  # type: ignore[operator]
    assert packer.packed_ahead(blocks[1:]) is None  # a part of a run is another run
    assert packer.packed_ahead(blocks) is not None


@pytest.mark.parametrize("link_rate", [None, 2.5e6])
def test_packs_are_used_on_unmeasured_and_slow_links_not_on_fast_ones(
    link_rate: float | None,
) -> None:
    packer = Packer()
    size = 4 << 20
    ahead = Packed(((b"\x01" * 32, size),), Codec.XZ, b"x" * (size // 4))
    assert packer.answers_with(ahead, link_rate)
    assert not packer.answers_with(ahead, 1e9)  # loopback: the peer's xz decoder would be the limit
    # Data xz cannot shrink is no better packed: zstd 1 makes it as fast, decoded faster.
    stored = Packed(((b"\x01" * 32, size),), Codec.XZ, b"x" * size)
    assert not packer.answers_with(stored, 50e6)


async def test_a_node_packs_what_it_publishes_and_nothing_unsigned(tmp_path: Path) -> None:
    from node.daemon.nodestore import NodeStore
    from node.daemon.prepack import Prepacker
    from node.local.store import LocalStore
    from store.source import Source

    tree = _tree(tmp_path / "t")
    key = SecretKey.generate("builder-1")
    with LocalStore(str(tmp_path / "data")) as local:
        store = NodeStore(local, diff_level=3)
        store.packer.packs = PackStore(tmp_path / "packs", cap=1 << 30)
        prepacker = Prepacker(store)
        store.on_published = prepacker.submit
        async with trio.open_nursery() as nursery:
            await nursery.start(prepacker.run)
            unsigned = await store.publish(
                Source(path=str(tree), store_path=str(SP)), None, root=True
            )
            assert prepacker.waiting == 0  # nobody vouches for it: nobody fetches it
            pub = await store.publish(Source(path=str(tree), store_path=str(SP)), key, root=True)
            with trio.fail_after(60):
                await prepacker.settled()
            nursery.cancel_scope.cancel()
        store.close()
    assert unsigned.manifest == pub.manifest
    runs = [r for r in cold_runs(pub.manifest) if len(r) >= CACHE_FROM]
    assert len(store.packer.packs) == len(runs)
    assert all(run_key(r) in store.packer.packs for r in runs)


async def test_paths_published_from_a_nix_store_are_packed_too(tmp_path: Path) -> None:
    """`ferry publish --all`, watch_store and the post-build hook publish in batches
    (`AutoPublish`), not through `NodeStore.publish`: their signed paths are packed as
    well."""
    from node.daemon.autopublish import AutoPublish
    from node.daemon.config import NodeConfig
    from node.daemon.nodestore import NodeStore
    from node.local.publish import Bulk
    from node.local.store import LocalStore

    key = SecretKey.generate("builder-1")
    chunks = export.MemoryChunks()
    m = build.from_directory(str(_tree(tmp_path / "t")), SP, on_chunk=chunks.add, workers=0)
    with LocalStore(str(tmp_path / "data")) as local:
        store = NodeStore(local, diff_level=3)
        submitted: list[Manifest] = []
        store.on_published = submitted.append

        async def announce(*args: object) -> None:
            pass

        auto = AutoPublish(str(tmp_path / "data"), NodeConfig(), store, announce)
        auto._committed(Bulk([(m, [sign_manifest(m, key)]), (m, [])], []))
        store.close()
    assert submitted == [m]  # the signed one; nobody fetches an unsigned path
