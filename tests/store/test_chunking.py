import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.chunking import (
    DEFAULT_POLICY,
    ChunkingError,
    ChunkingPolicy,
    FileChunker,
    KiB,
    MiB,
    digest,
)


@pytest.mark.parametrize(
    "size, chunk",
    [
        (225, 64 * KiB),
        (16 * MiB, 64 * KiB),
        (16 * MiB + 1, 256 * KiB),
        (64 * MiB, 256 * KiB),
        (64 * MiB + 1, MiB),
        (10**12, MiB),
    ],
)
def test_tiers(size: int, chunk: int) -> None:
    assert DEFAULT_POLICY.chunk_size(size) == chunk


def test_inline_limit() -> None:
    assert DEFAULT_POLICY.is_inline(224) and not DEFAULT_POLICY.is_inline(225)
    assert DEFAULT_POLICY.chunk_count(224) == 0 and list(DEFAULT_POLICY.spans(0)) == []
    assert DEFAULT_POLICY.chunk_count(225) == 1


@given(st.integers(225, 200 * MiB))
def test_spans_cover_the_file_aligned(size: int) -> None:
    spans = list(DEFAULT_POLICY.spans(size))
    cs = DEFAULT_POLICY.chunk_size(size)
    assert len(spans) == DEFAULT_POLICY.chunk_count(size)
    assert all(off == i * cs for i, (off, _) in enumerate(spans))
    assert sum(n for _, n in spans) == size and all(0 < n <= cs for _, n in spans)


@given(
    st.binary(min_size=225, max_size=300_000),
    st.lists(st.integers(1, 70_000), min_size=1, max_size=30),
)
def test_chunker_any_feed_sizes(data: bytes, cuts: list[int]) -> None:
    chunker = FileChunker(len(data))
    got = []
    pos = 0
    for n in cuts * (len(data) // sum(cuts) + 1):
        if pos >= len(data):
            break
        got += [bytes(c) for c in chunker.feed(data[pos : pos + n])]
        pos += n
    last = chunker.finish()
    if last:
        got.append(last)
    assert got == [data[o : o + n] for o, n in DEFAULT_POLICY.spans(len(data))]


def test_chunker_checks_sizes() -> None:
    c = FileChunker(300)
    with pytest.raises(ChunkingError, match="300 left"):
        c.feed(b"x" * 301)
    c.feed(b"x" * 100)
    with pytest.raises(ChunkingError, match="200 bytes early"):
        c.finish()


def test_parallel_digest_is_the_same() -> None:
    data = bytes(range(256)) * (8 * 1024)  # 2 MiB
    assert digest(data, parallel=True) == digest(data) == blake3.blake3(data).digest()


@given(
    st.builds(
        ChunkingPolicy,
        st.integers(0, 4095),
        st.just(((16 * MiB, 64 * KiB),)) | st.just(()),
        st.sampled_from([4 * KiB, MiB]),
    )
)
def test_policy_round_trip(policy: ChunkingPolicy) -> None:
    assert ChunkingPolicy.decode(policy.encode()) == policy


@pytest.mark.parametrize(
    "raw", [[224, [], 3000], [224, [[10, 8192], [5, 8192]], 8192], [5000, [], 4096], "x"]
)
def test_policy_rejects(raw: object) -> None:
    with pytest.raises(ChunkingError):
        ChunkingPolicy.decode(raw)
