"""Keeps a lazy backend's kernel fd alive across node restarts.

fanotify: when the last fd of a pre-content group closes, the kernel lets every waiting
reader through: they would read the slab's holes as zeros. cachefiles: when
/dev/cachefiles closes, the kernel withdraws the cache, and every file of every mount not
read yet answers ENOBUFS from then on, even once a new daemon binds. So the fd is made
and held by this tiny process, in a session of its own; the node borrows it over a unix
socket (SCM_RIGHTS). If the node dies, readers keep waiting; the next node takes the fd
over and serves them (fanotify: the events the dead one had taken get EIO; cachefiles:
`restore` makes the kernel send again what the dead one had taken).

    python -m ondemand.holder SOCKET                        a fanotify group
    python -m ondemand.holder SOCKET --cachefiles DIR TAG [--device PATH]
                                                            /dev/cachefiles, bound
    (the node starts it; mode 0600 socket). It prints "ready" once the socket accepts,
    or one line saying why it cannot, and exits 1.
    protocol: the client sends b"get" and receives one byte with the fd attached,
              or b"quit" (the node stopped with nothing mounted) and the holder exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections.abc import Callable, Iterator
from functools import partial

from ondemand import cachefiles, fanotify, syscalls


def new_group() -> int:
    return syscalls.fanotify_init(
        fanotify.FAN_CLASS_PRE_CONTENT | fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK,
        os.O_RDWR | os.O_LARGEFILE,
    )


@contextlib.contextmanager
def reachable(path: str) -> Iterator[str]:
    """`path` as a socket address: the kernel takes at most 107 bytes, a data directory
    can be longer, so a long one is reached through its directory's descriptor."""
    if len(os.fsencode(path)) < 100:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def bound_device(cache_dir: str, tag: str, device: str = "/dev/cachefiles") -> int:
    """/dev/cachefiles opened and bound to serve EROFS ondemand from `cache_dir`."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise OSError(
                e.errno,
                f"{device} is busy: another cachefiles daemon (cachefilesd?) holds it; stop it",
            ) from None
        raise
    try:
        for cmd in cachefiles.setup(cache_dir, tag):
            os.write(fd, cmd)
    except OSError:
        os.close(fd)
        raise
    return fd


def serve(path: str, make: Callable[[], int] = new_group) -> None:
    try:
        group = make()
    except OSError as e:
        print(e.strerror or e, flush=True)  # the node reports this line
        sys.exit(1)
    tmp = f"{path}.tmp{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        old = os.umask(0o177)
        try:
            with reachable(tmp) as address:
                srv.bind(address)
        finally:
            os.umask(old)
        srv.listen(4)
        os.replace(tmp, path)  # the socket appears only once it accepts
        print("ready", flush=True)  # the node waits for this line
        sys.stdout.close()
        while True:
            conn, _ = srv.accept()
            conn.settimeout(5)
            with conn:
                try:
                    req = conn.recv(16)
                    if req == b"get":
                        socket.send_fds(conn, [b"g"], [group])
                    elif req == b"quit":
                        # Gone before the answer: whoever asked may rely on it.
                        os.close(group)
                        os.unlink(path)
                        conn.sendall(b"q")
                        return
                except OSError:
                    continue  # a client that went away: keep holding


def borrow(path: str) -> int:
    """The group's fd from the holder at `path` (OSError if none answers)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        with reachable(path) as address:
            s.connect(address)
        s.sendall(b"get")
        _, fds, _, _ = socket.recv_fds(s, 1, 1)
    if not fds:
        raise OSError(f"the fanotify holder at {path} sent no group")
    return fds[0]


def release(path: str) -> None:
    """Tell the holder to drop the group and exit (nothing is mounted any more)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        with reachable(path) as address:
            s.connect(address)
        s.sendall(b"quit")
        s.recv(1)


def main(argv: list[str]) -> None:
    if len(argv) >= 4 and argv[1] == "--cachefiles":
        device = argv[5] if len(argv) == 6 and argv[4] == "--device" else "/dev/cachefiles"
        serve(argv[0], partial(bound_device, argv[2], argv[3], device))
    else:
        serve(argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
