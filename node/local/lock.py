"""One process owns a store at a time (the daemon, once it exists, serves the rest).

An advisory `flock` on `<data dir>/lock`: the kernel drops it when the owner exits,
even by kill -9, so there is never a stale lock to clean up. The owner's pid is
written into the file so a second process can say who holds it.
"""

from __future__ import annotations

import fcntl
import os

from node.local.errors import StoreInUse


class StoreLock:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, "lock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StoreInUse(data_dir, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
