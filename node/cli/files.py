"""Files the CLI reads and writes for the user: bounded reads with one-line errors,
and writes that never leave a half-written file behind."""

from __future__ import annotations

import os

from store import dump


class InputError(ValueError):
    """A file the user named cannot be used; the message names it and says why."""


def read_bounded(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not {what}") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit:,} bytes; that is not {what}")
    return data


def write_atomically(path: str, data: bytes) -> None:
    """`path` holds either its old contents or all of `data`, even after a crash."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except FileNotFoundError:
        raise InputError(f"{path}: its directory does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def tree_size(path: str) -> int | None:
    """Bytes a progress bar should expect for the tree at `path`; None if unknown."""
    try:
        return dump.tree_size(path)
    except OSError:
        return None  # the operation itself reports the problem properly
