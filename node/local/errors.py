"""What can go wrong with the local store, each with a message that says what to do."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the local store's errors; the message is meant for the user."""


class StoreInUse(StoreError):
    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"store {data_dir} is in use by {who}; wait for it to finish or stop it")


class StoreFull(StoreError):
    def __init__(self, data_dir: str, detail: str) -> None:
        super().__init__(
            f"no space left on the device holding {data_dir} ({detail}); nothing was added. "
            "Free space, or run `ferry gc` to drop unused paths, then try again"
        )


class StoreVersionError(StoreError):
    """The index was written by an incompatible ferry."""


class PathNotInStore(StoreError, KeyError):
    def __init__(self, store_path: str) -> None:
        super().__init__(f"{store_path} is not in this ferry store (see `ferry store list`)")

    def __str__(self) -> str:
        return str(self.args[0])


class PathIncomplete(StoreError):
    def __init__(self, store_path: str, missing: int) -> None:
        super().__init__(
            f"{store_path} is missing {missing} chunks; fetch it again or re-publish it"
        )
