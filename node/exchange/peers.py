"""What the node remembers about peers: traffic, misbehaviour, and who is banned."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)


@dataclass
class PeerRecord:
    sent_bytes: int = 0  # block bytes we served them
    received_bytes: int = 0  # verified block bytes they served us
    bad: int = 0  # protocol violations, bad blocks and strikes
    last_problem: str | None = None
    banned_until: float = 0.0
    strikes: list[float] = field(default_factory=list)  # when, within the last ban_seconds
    streams: int = 0  # inbound streams open now
    unanswered: int = 0  # claims requests in a row it left unanswered (0: it answers)
    serving: set[trio.CancelScope] = field(default_factory=set)  # its inbound streams' handlers


@dataclass
class PeerBook:
    """Bans are by peer ID, for `ban_seconds`; a banned peer's connection is closed and
    it is neither asked nor served until the ban runs out. Lesser offences (a stalled
    reply, a request left unanswered: what an overloaded honest peer may do too) are
    strikes; `strikes` of them within `ban_seconds` are a ban."""

    ban_seconds: float = 600.0
    strikes: int = 3
    records: dict[str, PeerRecord] = field(default_factory=dict)
    streams: int = 0  # inbound streams open now, all peers

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
        r.strikes.clear()
        log.warning("peer %s banned for %.0f s: %s", peer, self.ban_seconds, problem)

    def strike(self, peer: str, problem: str, now: float) -> bool:
        """Count a strike against `peer`; True if it is now banned (disconnect it)."""
        r = self.get(peer)
        r.strikes = [t for t in r.strikes if t > now - self.ban_seconds]
        r.strikes.append(now)
        r.bad += 1
        r.last_problem = problem
        if len(r.strikes) >= self.strikes:
            self.punish(peer, f"{problem} ({len(r.strikes)} strikes)", now)
            return True
        log.info("peer %s: strike %d of %d: %s", peer, len(r.strikes), self.strikes, problem)
        return False

    def banned(self, peer: str, now: float) -> bool:
        r = self.records.get(peer)
        return r is not None and r.banned_until > now

    def answered(self, peer: str, in_time: bool) -> None:
        """Record whether `peer` answered a claims request in time (see `quiet_last`)."""
        r = self.get(peer)
        r.unanswered = 0 if in_time else r.unanswered + 1

    def quiet_last(self, peers: list[str]) -> tuple[list[str], list[str]]:
        """`peers` split into those that answer and those whose last request went
        unanswered: the second are asked only when the first cannot decide."""
        answer = [p for p in peers if self.get(p).unanswered == 0]
        return answer, [p for p in peers if self.get(p).unanswered > 0]
