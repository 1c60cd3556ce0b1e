"""The fanotify pre-content backend against the real kernel (root, Linux 6.14+): an
EROFS image over a slab of holes is mounted; reads through the mount block until the
filler has written the chunks they need; the bytes come from a stand-in for the peers."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ondemand import fanotify, syscalls
from ondemand.filler import ChunkAt, Filler
from store.manifest import Manifest
from tests import trees
from tests.conftest import require
from tests.erofs.images import Slab, image_of, model

TREE = trees.Dir(
    {
        b"big": trees.File(3 << 20, 1, False),  # 48 chunks of 64 KiB
        b"mid": trees.File(300_000, 2, True),
        b"sub": trees.Dir({b"small": trees.File(100, 3, False), b"link": trees.Link(b"../mid")}),
        b"lonely": trees.File(70_000, 4, False),
    }
)


class Chunks:
    def __init__(self, manifest: Manifest, slab: Slab) -> None:
        self.by_offset: dict[int, ChunkAt] = {}
        self.files: dict[object, list[ChunkAt]] = {}
        for e in manifest.entries:
            spans = list(manifest.chunking.spans(e.size)) if e.chunks else []
            for i, ((_, length), d) in enumerate(zip(spans, e.chunks)):
                at = ChunkAt(d, slab.places[d][1] * 4096, length, e.path, i)
                self.by_offset[at.offset] = at
                self.files.setdefault(e.path, []).append(at)
        self.have: set[bytes] = set()

    def covering(self, fd: int, offset: int, count: int) -> list[ChunkAt]:
        return [
            c
            for c in self.by_offset.values()
            if c.offset < offset + count and offset < c.offset + c.length
        ]

    def file_chunks(self, file: object) -> list[ChunkAt]:
        return self.files[file]

    def present(self, digest: bytes) -> bool:
        return digest in self.have

    def written(self, digests: list[bytes]) -> None:
        self.have.update(digests)


class Peers:
    """Hands out chunk bytes like a fetch session would, counting what it sent."""

    def __init__(self, slab: Slab, chunks: Chunks, withhold: set[bytes]) -> None:
        self.data = {
            c.digest: bytes(slab.data[c.offset : c.offset + c.length])
            for c in chunks.by_offset.values()
        }
        self.withhold = set(withhold)
        self.sent: Counter[bytes] = Counter()
        self.gate = trio.Event()
        self.gate.set()

    async def fetch(self, digests: list[bytes], *, ahead: bool = False) -> dict[bytes, bytes]:
        await self.gate.wait()
        out = {}
        for d in digests:
            if d not in self.withhold:
                out[d] = self.data[d]
                self.sent[d] += 1
        return out


class Mounted:
    def __init__(
        self, root: Path, filler: Filler, chunks: Chunks, peers: Peers, lengths: dict[bytes, int]
    ) -> None:
        self.root = root
        self.filler = filler
        self.chunks = chunks
        self.peers = peers
        self.lengths = lengths

    @property
    def fetched(self) -> int:
        return sum(self.lengths[d] * n for d, n in self.peers.sent.items())


def _probe(tmp: Path) -> None:
    require(os.geteuid() == 0, "fanotify pre-content and mount(2) need root")
    try:
        os.close(
            syscalls.fanotify_init(fanotify.FAN_CLASS_PRE_CONTENT | fanotify.FAN_CLOEXEC, os.O_RDWR)
        )
    except OSError as e:
        require(False, f"this kernel has no fanotify pre-content events (Linux 6.14+): {e}")


@pytest.fixture
async def mounted(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Mounted]:
    _probe(tmp_path)
    image, slab, m = image_of(TREE)
    chunks = Chunks(m, slab)
    lengths = {c.digest: c.length for c in chunks.by_offset.values()}
    withhold = {m.entries[[e.path for e in m.entries].index(b"lonely")].chunks[0]}
    peers = Peers(slab, chunks, withhold)
    (tmp_path / "meta.erofs").write_bytes(image)
    slab_path = tmp_path / "slab"
    with open(slab_path, "wb") as f:
        f.truncate(len(slab.data))  # every chunk a hole: nothing is here until a read asks
    group = syscalls.fanotify_init(
        fanotify.FAN_CLASS_PRE_CONTENT | fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK,
        os.O_RDWR | os.O_LARGEFILE,
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    async def filled(digests: list[bytes]) -> None:
        chunks.have.update(digests)

    filler = Filler(group, chunks, peers.fetch, deadline=1.0, on_filled=filled)
    try:
        # Marked before EROFS opens the slab: no read of it escapes the filler.
        syscalls.fanotify_mark(
            group, fanotify.FAN_MARK_ADD, fanotify.FAN_PRE_ACCESS, str(slab_path)
        )
        syscalls.mount_erofs(str(tmp_path / "meta.erofs"), str(mnt), [str(slab_path)])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(filler.run)
                yield Mounted(mnt, filler, chunks, peers, lengths)
                nursery.cancel_scope.cancel()
        finally:
            syscalls.umount(str(mnt))
    finally:
        os.close(group)


async def _run(*argv: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False
        )


@pytest.mark.kernel
async def test_listing_fetches_nothing_and_reads_fetch_what_they_need(mounted: Mounted) -> None:
    r = await _run("find", str(mounted.root), "-ls")
    assert r.returncode == 0 and b"sub/small" in r.stdout
    assert mounted.fetched == 0  # metadata lives in the image
    r = await _run("cat", str(mounted.root / "sub" / "small"))
    assert (
        r.stdout == model(TREE)[b"sub/small"][2] and mounted.fetched == 0
    )  # small files are inline
    r = await _run("cat", str(mounted.root / "mid"))
    assert r.stdout == model(TREE)[b"mid"][2]
    assert 300_000 <= mounted.fetched <= 320 << 10
    r = await _run("cat", str(mounted.root / "big"))
    assert r.stdout == model(TREE)[b"big"][2]
    assert max(mounted.peers.sent.values()) == 1  # no chunk fetched twice


@pytest.mark.kernel
async def test_two_readers_of_one_missing_chunk_cause_one_fetch(mounted: Mounted) -> None:
    mounted.peers.gate = trio.Event()  # hold the "network" until both readers wait
    results: list[bytes] = []

    async def read() -> None:
        results.append((await _run("head", "-c", "1000", str(mounted.root / "mid"))).stdout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(read)
        with trio.fail_after(10):
            await mounted.filler.wait_for_events(2)
        mounted.peers.gate.set()
    assert results == [model(TREE)[b"mid"][2][:1000]] * 2
    assert set(mounted.peers.sent.values()) == {1}


@pytest.mark.kernel
async def test_a_chunk_no_peer_has_is_eio_not_zeros(mounted: Mounted) -> None:
    with trio.fail_after(10):
        r = await _run("cat", str(mounted.root / "lonely"))
    assert r.returncode != 0 and b"Input/output error" in r.stderr
    assert r.stdout.count(b"\0") < 100  # not a page of zeros
