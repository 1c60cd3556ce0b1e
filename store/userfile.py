"""Small files a user names (keys, policies, claims, manifests): bounded reads and safe
writes, with one-line errors that name the file. Callers wrap `UserFileError` in their
own error type when they want one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class UserFileError(ValueError):
    """A file that cannot be read or written; the message names it and says why."""


@contextmanager
def _named(path: str, what: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise UserFileError(f"{path}: no such file or directory") from None
    except IsADirectoryError:
        raise UserFileError(f"{path}: is a directory, not {what}") from None
    except PermissionError:
        raise UserFileError(f"{path}: permission denied") from None
    except FileExistsError:
        raise UserFileError(
            f"{path}: already exists; refusing to overwrite it (move it away first)"
        ) from None


def read(path: str, limit: int, what: str = "a file") -> bytes:
    """All of `path`, refusing more than `limit` bytes (the user named the wrong file)."""
    with _named(path, what), open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserFileError(f"{path}: larger than {limit:,} bytes; that is not {what}")
    return data


def write_atomically(path: str, data: bytes, what: str = "a file") -> None:
    """`path` holds either its old contents or all of `data`, even after a crash."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with _named(path, what):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def create(path: str, data: bytes, mode: int, what: str = "a file") -> None:
    """A new file with exactly `mode`, never replacing one (O_EXCL): the contents are
    never readable with looser permissions, not even for an instant."""
    with _named(path, what):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have taken bits off
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(path)
        raise
