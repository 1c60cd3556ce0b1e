"""Waiting for a file to appear without polling: inotify through ctypes (Linux)."""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from pathlib import Path

IN_CLOEXEC = 0o2000000
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class Watch:
    """Files created in, or renamed into, a set of directories."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, Path] = {}

    def add(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._dirs[wd] = directory

    def next(self, deadline: float) -> list[Path]:
        """The paths that appeared, as soon as there is one; [] once `deadline` (monotonic) passes."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            return []
        data = os.read(self.fd, 1 << 16)
        out, at = [], 0
        while at < len(data):
            wd, _, _, n = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size : at + _EVENT.size + n].rstrip(b"\0")
            at += _EVENT.size + n
            if wd in self._dirs:
                out.append(self._dirs[wd] / os.fsdecode(name))
        return out

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
