"""A fetch session's counters: what the control API streams while it runs, and what the
node adds to its metrics when it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    paths: int = 0
    paths_done: int = 0
    chunks: int = 0
    chunks_done: int = 0
    bytes: int = 0
    bytes_done: int = 0
    per_peer: dict[str, int] = field(default_factory=dict)  # verified bytes received from each peer
    deduplicated_chunks: int = 0  # needed by the recorded paths and already in the store
    deduplicated_bytes: int = 0
    received_bytes: int = 0  # block payloads on the wire, compressed (and diffed)
    diff_chunks: int = 0  # chunks that came as diffs against local bases
    diff_logical_bytes: int = 0  # their size once decoded
    diff_received_bytes: int = 0  # what they took on the wire
    metadata_bytes: int = 0  # claims and manifests as they came off the streams
    manifest_bytes: int = 0  # the manifests fetched, decoded (what their senders read)
    duplicate_bytes: int = 0  # blocks that came twice (asked of two peers at the end), on the wire
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        elapsed = max(1e-9, time.monotonic() - self.started)
        return {
            "paths": self.paths,
            "paths_done": self.paths_done,
            "chunks": self.chunks,
            "chunks_done": self.chunks_done,
            "bytes": self.bytes,
            "bytes_done": self.bytes_done,
            "per_peer": dict(self.per_peer),
            "rate": self.bytes_done / elapsed,
            "deduplicated_chunks": self.deduplicated_chunks,
            "deduplicated_bytes": self.deduplicated_bytes,
            "received_bytes": self.received_bytes,
            "diff_chunks": self.diff_chunks,
            "diff_logical_bytes": self.diff_logical_bytes,
            "diff_received_bytes": self.diff_received_bytes,
            "metadata_bytes": self.metadata_bytes,
            "manifest_bytes": self.manifest_bytes,
            "duplicate_bytes": self.duplicate_bytes,
        }
