"""The few Linux calls the ondemand backends need and Python lacks, through libc."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

AT_FDCWD = -100
MS_RDONLY = 1
MNT_DETACH = 2


def _check(result: int, what: str) -> int:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return result


def fanotify_init(flags: int, event_f_flags: int) -> int:
    return _check(_libc.fanotify_init(flags, event_f_flags), "fanotify_init")


def fanotify_mark(group: int, flags: int, mask: int, path: str) -> None:
    _check(
        _libc.fanotify_mark(group, flags, mask, AT_FDCWD, os.fsencode(path)),
        f"fanotify_mark {path}",
    )


def mount_erofs(image: str, target: str, devices: list[str]) -> None:
    """mount(2) read-only with `device=` options (util-linux mount would loop the image)."""
    opts = ",".join(f"device={d}" for d in devices).encode()
    _check(
        _libc.mount(os.fsencode(image), os.fsencode(target), b"erofs", MS_RDONLY, opts),
        f"mount {image} on {target}",
    )


def mount_erofs_fscache(target: str, fsid: str, domain: str) -> None:
    """mount(2) of an image served by cachefiles ondemand: no source device, the blob names."""
    opts = f"fsid={fsid},domain_id={domain}".encode()
    _check(
        _libc.mount(b"none", os.fsencode(target), b"erofs", MS_RDONLY, opts),
        f"mount {fsid} on {target}",
    )


def umount(target: str, detach: bool = False) -> None:
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH if detach else 0), f"umount {target}")


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
