"""Test hooks at the store's crash-safety checkpoints, set through the environment so
tests can drive the real `ferry` process:

    FERRY_TEST_CHECKPOINTS=FILE   append each checkpoint's name to FILE, one per line
    FERRY_TEST_CRASH=[NAME:]N     SIGKILL this process at the N-th checkpoint (counting
                                  only those called NAME, if given)
    FERRY_TEST_BATCH_BYTES=N      commit chunk batches every N bytes (smaller batches,
                                  more checkpoints)

Nothing here runs unless those variables are set.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

from node.local.store import Checkpoint


class CrashAt:
    def __init__(self, spec: str | None, log: str | None) -> None:
        name, _, n = (spec or "").rpartition(":")
        self.name = name or None
        self.remaining = int(n) if n else 0
        self.log = open(log, "a", buffering=1) if log else None  # noqa: SIM115 (open for the process)

    def __call__(self, name: str) -> None:
        if self.log:
            self.log.write(name + "\n")
        if self.remaining and (self.name is None or self.name == name):
            self.remaining -= 1
            if not self.remaining:
                os.kill(os.getpid(), signal.SIGKILL)


def from_environment(env: Mapping[str, str]) -> tuple[Checkpoint | None, int | None]:
    """(checkpoint hook, batch size) as the environment asks, or (None, None)."""
    spec, log = env.get("FERRY_TEST_CRASH"), env.get("FERRY_TEST_CHECKPOINTS")
    batch = env.get("FERRY_TEST_BATCH_BYTES")
    hook = CrashAt(spec, log) if spec or log else None
    return hook, int(batch) if batch else None
