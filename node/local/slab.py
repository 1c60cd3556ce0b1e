"""Slab files: large sparse files holding chunks raw at 4 KiB-aligned offsets.

Alignment lets a slab serve as an EROFS extra device later (EROFS addresses blob data
in 4 KiB blocks). A chunk not fetched yet, or freed by GC, is a hole: freeing punches
the hole (`fallocate(PUNCH_HOLE)`) and gives the disk space back at once, while the
slab's logical size, and every other chunk's offset, stay as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

BLOCK = 4096
DEFAULT_CAP = 1 << 40  # 1 TiB of logical size; EROFS block addresses reach 16 TiB

_IOV_MAX = 1024
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_libc.fallocate.restype = ctypes.c_int


def align(n: int) -> int:
    """`n` rounded up to a whole number of blocks: the space a chunk of `n` bytes takes."""
    return -(-n // BLOCK) * BLOCK


class Slab:
    """One open slab file. Offsets and sizes come from the index; this only does I/O."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def write_many(self, offset: int, pieces: list[bytes | memoryview]) -> None:
        """Write `pieces` back to back from `offset`, without joining them first."""
        while pieces:
            batch, pieces = pieces[:_IOV_MAX], pieces[_IOV_MAX:]
            want = sum(len(p) for p in batch)
            n = os.pwritev(self.fd, batch, offset)
            if n < want:  # short write (rare): finish this batch piece by piece
                self.write(offset + n, b"".join(batch)[n:])
            offset += want

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            # Past the end of the file: the index promised more than the slab holds.
            raise OSError(
                errno.EIO, f"{self.path}: {length} bytes at {offset} reach past the end of the slab"
            )
        return data

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def punch(self, offset: int, length: int) -> None:
        """Free the blocks of [offset, offset + length); reads there then give zeros."""
        if length <= 0:
            return
        if (
            _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
            != 0
        ):
            e = ctypes.get_errno()
            raise OSError(e, f"{self.path}: cannot punch a hole: {os.strerror(e)}")

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def disk_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
