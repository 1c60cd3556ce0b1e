"""The node's Prometheus metrics (`GET /metrics`), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.served_bytes = Counter(
            "ferry_gateway_served_bytes", "NAR bytes sent to Nix by the gateway", registry=r
        )
        self.fetched_bytes = Counter(
            "ferry_fetched_bytes", "chunk bytes received from peers (verified)", registry=r
        )
        self.fetched_chunks = Counter(
            "ferry_fetched_chunks", "chunks received from peers (verified)", registry=r
        )
        self.received_bytes = Counter(
            "ferry_received_bytes",
            "chunk payload bytes on the wire from peers (compressed, diffs included)",
            registry=r,
        )
        self.diff_logical_bytes = Counter(
            "ferry_diff_logical_bytes",
            "bytes of chunks that came as diffs against an older local version",
            registry=r,
        )
        self.diff_received_bytes = Counter(
            "ferry_diff_received_bytes", "what those diffs took on the wire", registry=r
        )
        self.deduplicated_chunks = Counter(
            "ferry_deduplicated_chunks",
            "chunks a fetch needed and the store already had",
            registry=r,
        )
        self.deduplicated_bytes = Counter(
            "ferry_deduplicated_bytes",
            "bytes of chunks a fetch needed and the store already had",
            registry=r,
        )
        self.narinfo = Counter(
            "ferry_gateway_narinfo",
            "narinfo requests by result (hit, miss, refused) and reason",
            ["result", "reason"],
            registry=r,
        )
        self.nar_failures = Counter(
            "ferry_gateway_nar_failures",
            "NAR requests answered 503, by reason",
            ["reason"],
            registry=r,
        )

        self.ahead = Counter(
            "ferry_gateway_ahead_paths",
            "paths the gateway planned (a closure's references) or fetched (small paths "
            "whose narinfo Nix asked for) before Nix asked for them",
            ["work"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
