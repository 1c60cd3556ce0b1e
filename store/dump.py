"""A directory tree as NAR: the walk in NAR order, and `dump`, ferry's `nix-store --dump`."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from store import nar

BLOCK = 1 << 20


class DumpError(OSError):
    """A tree that cannot be archived as Nix would (unsupported file, changed while read)."""


def walk(root: str | bytes) -> Iterator[tuple[nar.Node, bytes]]:
    """Each node of the tree at `root` in NAR order, with its filesystem path.

    Symlinks are not followed; files are executable when the owner may execute them,
    as in Nix. Raises DumpError for sockets, fifos and devices, and for trees that
    break the NAR rules (deeper than 64 levels).
    """
    top = os.fsencode(root)
    yield from _walk(top, b"", os.lstat(top))


def _walk(fspath: bytes, path: bytes, st: os.stat_result) -> Iterator[tuple[nar.Node, bytes]]:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        yield nar.Regular(path, st.st_size, bool(mode & stat.S_IXUSR)), fspath
    elif stat.S_ISLNK(mode):
        target = os.readlink(fspath)
        if not target:
            raise DumpError(
                f"symlink {os.fsdecode(fspath)!r} has an empty target, which a NAR cannot hold"
            )
        yield nar.Symlink(path, target), fspath
    elif stat.S_ISDIR(mode):
        if nar.depth(path) >= nar.MAX_DEPTH:
            raise DumpError(
                f"{os.fsdecode(fspath)!r} is more than {nar.MAX_DEPTH} levels deep; a NAR cannot hold it"
            )
        yield nar.Directory(path), fspath
        with os.scandir(fspath) as it:
            children = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        for name, child_st in children:
            yield from _walk(fspath + b"/" + name, path + b"/" + name if path else name, child_st)
    else:
        raise DumpError(
            f"{os.fsdecode(fspath)!r} is a {_kind(mode)}, not a file, directory or symlink; "
            "a NAR cannot hold it"
        )


def tree_size(root: str | bytes) -> int:
    """Bytes of file contents under `root` (for progress bars)."""
    return sum(node.size for node, _ in walk(root) if isinstance(node, nar.Regular))


def read_file(fspath: bytes, size: int, block: int = BLOCK) -> Iterator[bytes]:
    """The file's bytes in blocks, checking it still has the size the walk saw."""
    fd = os.open(fspath, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        left = size
        saw_end = False
        while left:
            # Asking one byte more than remains shows growth without a separate read
            # (the common case for small files: one read per file).
            want = min(block, left + 1)
            data = os.read(fd, want)
            if not data:
                raise DumpError(
                    f"{os.fsdecode(fspath)!r} shrank while being read; archive it again"
                )
            if len(data) > left:
                raise DumpError(f"{os.fsdecode(fspath)!r} grew while being read; archive it again")
            left -= len(data)
            saw_end = want > len(data)
            yield data
        if not saw_end and os.read(fd, 1):
            raise DumpError(f"{os.fsdecode(fspath)!r} grew while being read; archive it again")
    finally:
        os.close(fd)


def events(root: str | bytes) -> Iterator[nar.NarEvent]:
    """The NAR events of the tree at `root`, file contents in blocks."""
    for node, fspath in walk(root):
        yield node
        if isinstance(node, nar.Regular) and node.size:
            for data in read_file(fspath, node.size):
                yield nar.Contents(data)


def dump(root: str | bytes) -> Iterator[bytes | memoryview]:
    """The NAR of the tree at `root`, byte-identical to `nix-store --dump`."""
    return nar.encode(events(root))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"
