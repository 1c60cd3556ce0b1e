"""`write_paced`: a reply written in pieces, with the reader's pace watched (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2p.stream import PIECE, ReaderStalled, StreamGone, write_paced


class Reader:
    """A stream whose peer takes one piece every `every` seconds (None: never again)."""

    def __init__(self, every: float | None, after: int = 0) -> None:
        self.every = every
        self.after = after  # pieces taken at once before the pace sets in
        self.taken: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if len(self.taken) >= self.after:
            if self.every is None:
                await trio.sleep_forever()
            await trio.sleep(self.every)
        self.taken.append(data)

    async def read(self, n: int | None = None) -> bytes:
        raise AssertionError("not read")

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


async def _paced(reader: Reader, size: int) -> list[float]:
    slow: list[float] = []
    await write_paced(
        reader, b"x" * size, slow=0.5, stall=20, on_slow=lambda: slow.append(trio.current_time())
    )
    return slow


async def test_a_reader_that_keeps_up_is_never_called_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = Reader(every=0.1)
    assert await _paced(reader, 10 * PIECE + 5) == []
    assert b"".join(reader.taken) == b"x" * (10 * PIECE + 5)
    assert max(len(p) for p in reader.taken) == PIECE


async def test_a_slow_reader_is_told_once_and_still_gets_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = Reader(every=2.0, after=3)
    slow = await _paced(reader, 6 * PIECE)
    assert slow == [pytest.approx(0.5)]  # the first piece it waited for, once
    assert len(b"".join(reader.taken)) == 6 * PIECE


async def test_a_reader_that_stops_is_given_up_after_the_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reader = Reader(every=None, after=2)
    with pytest.raises(ReaderStalled):
        await _paced(reader, 6 * PIECE)
    assert trio.current_time() == pytest.approx(20)
    assert len(reader.taken) == 2


async def test_a_window_py_libp2p_gave_up_on_counts_as_stalled() -> None:
    class Shut(Reader):
        async def write(self, data: bytes) -> None:
            raise StreamGone("StreamReset (Timed out waiting for window update after 5 seconds.)")

    with pytest.raises(ReaderStalled):
        await _paced(Shut(every=None), PIECE)
