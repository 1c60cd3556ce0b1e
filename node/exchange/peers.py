"""What the node remembers about peers: traffic, misbehaviour, and who is banned."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class PeerRecord:
    sent_bytes: int = 0  # block bytes we served them
    received_bytes: int = 0  # verified block bytes they served us
    bad: int = 0  # protocol violations and bad blocks
    last_problem: str | None = None
    banned_until: float = 0.0


@dataclass
class PeerBook:
    """Bans are by peer ID, for `ban_seconds`; a banned peer's connection is closed and
    it is neither asked nor served until the ban runs out."""

    ban_seconds: float = 600.0
    records: dict[str, PeerRecord] = field(default_factory=dict)

    def get(self, peer: str) -> PeerRecord:
        r = self.records.get(peer)
        if r is None:
            r = self.records[peer] = PeerRecord()
        return r

    def punish(self, peer: str, problem: str, now: float) -> None:
        r = self.get(peer)
        r.bad += 1
        r.last_problem = problem
        r.banned_until = now + self.ban_seconds
        log.warning("peer %s banned for %.0f s: %s", peer, self.ban_seconds, problem)

    def banned(self, peer: str, now: float) -> bool:
        r = self.records.get(peer)
        return r is not None and r.banned_until > now
