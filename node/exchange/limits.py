"""What one peer may cost this node: streams, replies it is slow to take, request frames
it is slow to finish, claims from keys the node has no reason to keep.

Strangers connect freely, so every resource a request ties up has a cap or a deadline.
A peer that reaches one gets a strike (`PeerBook.strike`); `strikes` of them within
`ban_seconds` ban it (disconnected, neither asked nor served until the ban runs out). The
values are `node.toml`'s `[limits]` table; docs/configuration.md lists them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _limit(default: Any, meaning: str) -> Any:
    return field(default=default, metadata={"meaning": meaning})


@dataclass(frozen=True)
class PeerLimits:
    streams_per_peer: int = _limit(
        128,
        "inbound streams (blocks, claims, summaries) one peer may hold open at once; more are reset "
        "and count as a strike",
    )
    streams_total: int = _limit(1024, "inbound streams from all peers at once; more are reset")
    replies_per_peer: int = _limit(
        4,
        "block replies being sent to one peer at once; its other want-blocks are answered BUSY",
    )
    slot_stall: float = _limit(
        0.5,
        "seconds a block reply may go without the peer taking a 64 KiB piece before it gives up its "
        "upload slot; the peer gets none until it catches up (it is still sent what it asked for)",
    )
    send_stall: float = _limit(
        20.0,
        "seconds a reply may go without the peer taking a 64 KiB piece before the stream is reset "
        "and the peer gets a strike (a peer that asks and does not read)",
    )
    frame_deadline: float = _limit(
        10.0,
        "seconds a peer has to finish a request frame it has started (and a claims exchange); "
        "then the stream is dropped and the peer gets a strike",
    )
    reply_bytes: int = _limit(
        64 << 20,
        "bytes of block replies being sent to all peers at once; past it, want-blocks are answered "
        "BUSY (peers ask elsewhere and come back)",
    )
    unknown_claims_per_path: int = _limit(
        32,
        "claims per store path kept from keys outside the trust policy (one per key); the rest are "
        "refused and count against the sender",
    )
    slow_replies: int = _limit(
        16,
        "block replies kept going to peers that stopped taking them (past slot_stall), all peers; "
        "past it such a reply is dropped and its stream reset",
    )
    relay_reservations: int = _limit(
        128, "peers behind NAT this node holds a relay slot for at once (when it relays)"
    )
    relay_circuits: int = _limit(
        32,
        "relayed connections at once: through this node when it relays, and to this node "
        "through relays",
    )
    relay_circuits_per_peer: int = _limit(
        4, "relayed connections one peer may have through this node"
    )
    relay_circuit_bytes: int = _limit(
        64 << 20,
        "bytes a relayed connection carries through this node, both ways together, before the "
        "node ends it (peers that cannot punch a hole fetch through it up to this much at a time)",
    )
    relay_circuit_seconds: float = _limit(
        600.0, "seconds a relayed connection through this node lasts at most"
    )
    strikes: int = _limit(
        3,
        "strikes (a stalled reply, an unfinished frame, too many streams or junk claims, claims "
        "requests left unanswered three times in a row) within ban_seconds that ban a peer",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{f.name} must be a number above 0")
        if self.slot_stall >= self.send_stall:
            raise ValueError("slot_stall must be shorter than send_stall")


DEFAULT = PeerLimits()


def meanings() -> dict[str, str]:
    return {f.name: f.metadata["meaning"] for f in dataclasses.fields(PeerLimits)}


def sizes() -> frozenset[str]:
    """The limits counted in bytes (they take "64M" as well as a number)."""
    return frozenset({"reply_bytes", "relay_circuit_bytes"})


def integers() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(PeerLimits) if f.type == "int")
