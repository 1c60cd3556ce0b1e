"""Keeps a fanotify pre-content group alive across node restarts.

When the last fd of a group closes, the kernel lets every waiting reader through: they
would read the slab's holes as zeros. So the group is created and held by this tiny
process, in a session of its own; the node borrows the fd over a unix socket
(SCM_RIGHTS). If the node dies, readers keep waiting; the next node takes the fd over,
answers the events the dead one had taken with EIO, and serves the rest.

    python -m ondemand.holder SOCKET     (the node starts it; mode 0600 socket)
    protocol: the client sends b"get" and receives one byte with the fd attached,
              or b"quit" (the node stopped with nothing mounted) and the holder exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator

from ondemand import fanotify, syscalls


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


def serve(path: str) -> None:
    group = new_group()
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


if __name__ == "__main__":
    serve(sys.argv[1])
