"""The cachefiles ondemand backend's loop (Linux 5.19–7.1 with CONFIG_CACHEFILES_ONDEMAND
and CONFIG_EROFS_FS_ONDEMAND): read messages from the device, answer OPENs with the
blob's size, fill READs (page-aligned, clamped to the blob) through the object's anon
fd and complete them, close on CLOSE. A READ whose bytes cannot be had is completed
without data, so the reader gets an error rather than a hole; a malformed message or an
unknown object is logged and skipped, never fatal.

The device is an interface (`Device`), so the same loop runs on /dev/cachefiles (tested
in a VM: tests/vm) and on the emulated device the rest of the suite uses (this machine's
kernel lacks the ondemand mode).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import trio

from ondemand import cachefiles
from ondemand.cachefiles import Close, MessageError, Open, Read
from ondemand.syscalls import pwrite_all

log = logging.getLogger(__name__)

PAGE = 4096


def write_pages(fd: int, data: bytes, offset: int) -> None:
    """`data` at page-aligned `offset`, as whole pages from a page-aligned buffer (an
    anonymous mapping is one)."""
    size = -(-len(data) // PAGE) * PAGE
    with mmap.mmap(-1, size) as buf:
        buf[: len(data)] = data
        pwrite_all(fd, memoryview(buf), offset)


class Device(Protocol):
    async def read_message(self) -> bytes: ...
    def command(self, cmd: bytes) -> None: ...
    def read_complete(self, anon_fd: int, msg_id: int) -> None: ...


class Blobs(Protocol):
    """The blobs a mount names: the metadata image (cookie = its fsid) and the slabs
    (cookie = the device tag)."""

    def size(self, volume: bytes, cookie: bytes) -> int | None: ...
    def read(self, volume: bytes, cookie: bytes, off: int, n: int) -> Awaitable[bytes | None]: ...


class CacheDevice:
    """/dev/cachefiles itself, opened and bound (`ondemand.holder.bound_device`, in the
    holder process). `restore`: the fd was held across a daemon's death; the kernel
    sends again the requests that daemon had read and not answered."""

    def __init__(self, fd: int, *, restore: bool = False) -> None:
        self.fd = fd
        if restore:
            os.write(self.fd, cachefiles.RESTORE)

    async def read_message(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                return os.read(self.fd, cachefiles.MSG_MAX_SIZE)
            except BlockingIOError:
                continue

    def command(self, cmd: bytes) -> None:
        os.write(self.fd, cmd)

    def read_complete(self, anon_fd: int, msg_id: int) -> None:
        fcntl.ioctl(anon_fd, cachefiles.IOC_READ_COMPLETE, msg_id)


@dataclass
class _Object:
    fd: int
    volume: bytes
    cookie: bytes
    size: int


class CachefilesDaemon:
    def __init__(self, device: Device, blobs: Blobs) -> None:
        self.device = device
        self.blobs = blobs
        self.objects: dict[int, _Object] = {}
        self.bad_messages = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                raw = await self.device.read_message()
                try:
                    msg = cachefiles.decode(raw)
                except MessageError as e:
                    self.bad_messages += 1
                    log.warning("cachefiles: skipping a malformed message: %s", e)
                    continue
                if isinstance(msg, Open):
                    self._open(msg)
                elif isinstance(msg, Close):
                    self._close(msg)
                else:
                    nursery.start_soon(self._read, msg)

    def _open(self, msg: Open) -> None:
        size = self.blobs.size(msg.volume_key, msg.cookie_key)
        if size is None:
            log.warning("cachefiles: OPEN of unknown blob %r in %r", msg.cookie_key, msg.volume_key)
            self.device.command(cachefiles.copen(msg.msg_id, -errno.ENOENT))
            os.close(msg.fd)
            return
        self.objects[msg.object_id] = _Object(msg.fd, msg.volume_key, msg.cookie_key, size)
        self.device.command(cachefiles.copen(msg.msg_id, size))

    def _close(self, msg: Close) -> None:
        obj = self.objects.pop(msg.object_id, None)
        if obj is None:
            log.warning("cachefiles: CLOSE of unknown object %d", msg.object_id)
            return
        os.close(obj.fd)

    async def _read(self, msg: Read) -> None:
        obj = self.objects.get(msg.object_id)
        if obj is None:
            log.warning("cachefiles: READ %d of unknown object %d", msg.msg_id, msg.object_id)
            return  # no anon fd to complete it on
        # The cache is filled in whole pages: the anon fd writes with direct I/O, which
        # the kernel refuses (EINVAL) unless offset, length and buffer are page-aligned.
        # Past the blob's end, the last page is padded with zeros.
        start = msg.off // PAGE * PAGE
        end = min(obj.size, -(-(msg.off + msg.len) // PAGE) * PAGE)
        try:
            if start < end:
                data = await self.blobs.read(obj.volume, obj.cookie, start, end - start)
                if data is not None and len(data) == end - start:
                    await trio.to_thread.run_sync(write_pages, obj.fd, data, start)
                else:
                    log.warning(
                        "cachefiles: %r bytes %d..%d are not available", obj.cookie, start, end
                    )
        except Exception:  # a bug must not leave the reader waiting forever
            log.exception("cachefiles: filling READ %d", msg.msg_id)
        finally:
            # Completed with or without data: without, the reader gets an error, not a hole.
            self.device.read_complete(obj.fd, msg.msg_id)
