"""The cachefiles ondemand backend against an emulated /dev/cachefiles that follows the
uapi: message bytes as the kernel lays them out, anon fds as real files, and the
READ_COMPLETE ioctl through a hook (the kernels here lack CONFIG_CACHEFILES_ONDEMAND)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from ondemand import cachefiles, holder
from ondemand.cachefiles import Close, MessageError, Open, Read
from ondemand.cachefilesd import CacheDevice, CachefilesDaemon

VOLUME = b"erofs,ferry-domain"
IMAGE = bytes(range(256)) * 37  # 9472 bytes: not a whole number of pages
SLAB = os.urandom(3 * 4096 + 100)


class EmulatedDevice:
    def __init__(self) -> None:
        self.send, self._receive = trio.open_memory_channel[bytes](100)
        self.commands: list[bytes] = []
        self.completed: list[tuple[int, int]] = []
        self.changed = trio.Event()

    async def read_message(self) -> bytes:
        return await self._receive.receive()

    def command(self, cmd: bytes) -> None:
        self.commands.append(cmd)
        self._wake()

    def read_complete(self, anon_fd: int, msg_id: int) -> None:
        os.fstat(anon_fd)  # the kernel would refuse a closed fd too
        self.completed.append((anon_fd, msg_id))
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, cond) -> None:  # type: ignore[no-untyped-def]
        with trio.fail_after(10):
            while not cond():
                await self.changed.wait()


class Blobs:
    def __init__(self) -> None:
        self.blobs = {b"fsid-1": IMAGE, b"slab-000001": SLAB}
        self.withheld: set[bytes] = set()

    def size(self, volume: bytes, cookie: bytes) -> int | None:
        return len(self.blobs[cookie]) if volume == VOLUME and cookie in self.blobs else None

    async def read(self, volume: bytes, cookie: bytes, off: int, n: int) -> bytes | None:
        if cookie in self.withheld:
            return None
        return self.blobs[cookie][off : off + n]


@pytest.fixture
async def daemon(nursery: trio.Nursery):  # type: ignore[no-untyped-def]
    dev, blobs = EmulatedDevice(), Blobs()
    d = CachefilesDaemon(dev, blobs)
    nursery.start_soon(d.run)
    return d, dev, blobs


def _anon(tmp: Path, name: str) -> int:
    """A stand-in for the kernel's anon fd, which writes with direct I/O: O_DIRECT makes
    an unaligned write fail with EINVAL here too, as it does on a real kernel."""
    return os.open(tmp / name, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)


async def test_open_read_close(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d, dev, _blobs = daemon
    fd = _anon(tmp_path, "cache-slab")
    slab_ino = os.fstat(fd).st_ino
    await dev.send.send(cachefiles.encode(Open(7, 1, VOLUME, b"slab-000001", fd, 0)))
    await dev.until(lambda: dev.commands)
    assert dev.commands == [f"copen 7,{len(SLAB)}".encode()]
    # An unaligned read: the cache gets whole pages around it, the last clamped to the blob.
    await dev.send.send(cachefiles.encode(Read(8, 1, 5000, 8000)))
    await dev.until(lambda: dev.completed)
    assert dev.completed == [(fd, 8)]
    cached = (tmp_path / "cache-slab").read_bytes()
    assert cached[4096 : len(SLAB)] == SLAB[4096:]
    assert cached[len(SLAB) :] == bytes(-len(SLAB) % 4096)  # the last page, padded
    assert cached[:4096] == bytes(4096)  # not asked for: still a hole
    await dev.send.send(cachefiles.encode(Close(9, 1)))
    await dev.send.send(cachefiles.encode(Read(10, 1, 0, 10)))  # after CLOSE: an unknown object
    await dev.send.send(
        cachefiles.encode(Open(11, 2, VOLUME, b"fsid-1", _anon(tmp_path, "img"), 0))
    )
    await dev.until(lambda: len(dev.commands) == 2)
    # The anon fd was closed on CLOSE (its number may since hold the image's new fd).
    try:
        closed = os.fstat(fd).st_ino != slab_ino
    except OSError:
        closed = True
    assert closed and 1 not in d.objects
    assert dev.completed == [(fd, 8)]  # nothing completed for the unknown object


async def test_unknown_blob_is_refused_and_its_fd_closed(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _d, dev, _ = daemon
    fd = _anon(tmp_path, "x")
    await dev.send.send(cachefiles.encode(Open(1, 5, VOLUME, b"no-such-blob", fd, 0)))
    await dev.until(lambda: dev.commands)
    assert dev.commands == [f"copen 1,{-errno.ENOENT}".encode()]
    with pytest.raises(OSError):
        os.fstat(fd)


async def test_unavailable_bytes_complete_without_data(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _d, dev, blobs = daemon
    blobs.withheld.add(b"fsid-1")
    fd = _anon(tmp_path, "img")
    await dev.send.send(cachefiles.encode(Open(1, 3, VOLUME, b"fsid-1", fd, 0)))
    await dev.send.send(cachefiles.encode(Read(2, 3, 0, 4096)))
    await dev.until(lambda: dev.completed)
    assert (
        dev.completed == [(fd, 2)] and (tmp_path / "img").read_bytes() == b""
    )  # the reader gets an error


async def test_malformed_messages_are_survived(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d, dev, _ = daemon
    for junk in (
        b"",
        b"\x01\x02",
        cachefiles.encode(Read(1, 1, 0, 1))[:-3],
        b"\0" * 12 + b"\x10\0\0\0",
        cachefiles.encode(Close(1, 1)) + b"x",
    ):
        await dev.send.send(junk)
    await dev.send.send(cachefiles.encode(Open(3, 1, VOLUME, b"fsid-1", _anon(tmp_path, "i"), 0)))
    await dev.until(lambda: dev.commands)
    assert d.bad_messages == 5 and dev.commands == [f"copen 3,{len(IMAGE)}".encode()]


def test_the_device_is_bound_and_restored(tmp_path: Path) -> None:
    fake = tmp_path / "device"
    fake.write_bytes(b"")
    CacheDevice(holder.bound_device(str(tmp_path / "cache"), "ferry", str(fake)), restore=True)
    assert (
        fake.read_bytes()
        == f"dir {tmp_path / 'cache'}".encode() + b"tag ferry" + b"bind ondemand" + b"restore"
    )


def test_a_holder_keeps_the_bound_device_for_the_next_node(tmp_path: Path) -> None:
    """Closing /dev/cachefiles withdraws the cache: a holder process keeps it bound while
    nodes come and go, and drops it when told nothing is mounted."""
    fake = tmp_path / "device"
    fake.write_bytes(b"")
    sock = str(tmp_path / "cachefiles.sock")
    args = ["--cachefiles", str(tmp_path / "cache"), "ferry", "--device", str(fake)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand.holder", sock, *args], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        first = holder.borrow(sock)
        os.close(first)  # a node dies: the holder still has the device open
        second = holder.borrow(sock)
        CacheDevice(second, restore=True)  # the next node takes it over
        os.close(second)
        assert fake.read_bytes().endswith(b"bind ondemandrestore")  # bound once, then restored
        holder.release(sock)
        assert proc.wait(10) == 0 and not os.path.exists(sock)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_holder_that_cannot_bind_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-device"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ondemand.holder",
            str(tmp_path / "s"),
            "--cachefiles",
            str(tmp_path),
            "ferry",
            "--device",
            str(missing),
        ],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 1 and b"No such file" in proc.stdout


msgs = st.one_of(
    st.builds(
        Open,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.binary(min_size=0, max_size=100).filter(lambda b: b"\0" not in b),
        st.binary(max_size=100),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    ),
    st.builds(Close, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(
        Read,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    ),
)


@given(msgs)
def test_messages_round_trip(msg) -> None:  # type: ignore[no-untyped-def]
    assert cachefiles.decode(cachefiles.encode(msg)) == msg


@given(st.binary(max_size=1100))
def test_junk_is_only_ever_a_message_error(raw: bytes) -> None:
    try:
        cachefiles.decode(raw)
    except MessageError:
        pass
