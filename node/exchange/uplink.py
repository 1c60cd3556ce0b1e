"""Who gets this node's uplink now: upload slots, shared by all its block streams.

A node that many peers fetch from at once (a builder in a flash crowd) sends blocks to at
most `slots` peers at a time and answers the others' want-blocks BUSY once they have
waited a moment for a slot (`wait_turn`); they ask other peers and come back after a
pause. Without slots the uplink is split among every asker,
so every chunk arrives at the very end and no fetcher has anything to pass on until then;
with them, chunks leave one after another and spread from the first recipients while the
builder sends the next ones (BitTorrent's unchoke slots do the same).

A peer holds a slot while a reply with blocks to it is being sent and taken: peers take
turns at the pace of their requests. A reply the peer stops taking (`Turn.stall`: a slow
or hostile reader) gives its slot up at once, and that peer gets no other until it has
taken what it was sent. Block replies in flight are capped per peer and in bytes overall;
stalled ones leave the byte cap to the others but are capped in number (past it a stalled
reply is dropped), so peers that ask and do not read tie up a bounded amount of memory
and never the whole uplink. No I/O of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

DEFAULT_SLOTS = 8


@dataclass
class Turn:
    """One block reply to `peer`, from admission to the end of its sending."""

    uplink: Uplink
    peer: str
    bytes: int = 0
    holding: bool = True  # holds the peer's slot and counts in `in_flight` (until it stalls)
    slow: bool = False  # goes on slotless, one of the uplink's `slow_replies`
    done: bool = False

    def carry(self, size: int) -> None:
        """The reply's encoded size, once known: it counts against the byte cap."""
        self.bytes += size
        if self.holding:
            self.uplink.in_flight += size

    def stall(self) -> bool:
        """The peer stopped taking this reply: its slot and its bytes' share of the cap go
        to others. False if the uplink already keeps as many slow replies as it will:
        then this one is to be dropped."""
        if not self.holding or self.done:
            return True
        u = self.uplink
        self.holding = False
        u._unhold(self.peer)
        u.in_flight -= self.bytes
        u._changed()
        if u.slow >= u.slow_replies:
            return False
        self.slow = True
        u.slow += 1
        u._stalled[self.peer] = u._stalled.get(self.peer, 0) + 1
        return True

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        u = self.uplink
        _decrement(u._replies, self.peer)
        if self.holding:
            u._unhold(self.peer)
            u.in_flight -= self.bytes
        elif self.slow:
            u.slow -= 1
            _decrement(u._stalled, self.peer)
        u._changed()


@dataclass
class Uplink:
    slots: int = DEFAULT_SLOTS
    replies_per_peer: int = 4
    reply_bytes: int = 64 << 20
    slow_replies: int = 16  # replies kept going to peers that stopped taking them, at most
    _holders: dict[str, int] = field(default_factory=dict)  # peer -> replies holding its slot
    _replies: dict[str, int] = field(default_factory=dict)  # peer -> replies being sent
    _stalled: dict[str, int] = field(default_factory=dict)  # peer -> replies it stopped taking
    in_flight: int = 0  # bytes of block replies being sent and taken
    slow: int = 0  # replies going on slotless to peers that stopped taking them
    turned_away: int = 0  # want batches answered BUSY for want of a slot
    _change: trio.Event = field(default_factory=trio.Event)  # set when a turn ends or stalls

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError("an uplink needs at least one slot")

    def admit(self, peer: str) -> Turn | None:
        """A turn to send blocks to `peer` now (it holds a slot until the turn finishes
        or stalls), or None: answer BUSY."""
        turn = self.try_turn(peer)
        if turn is None:
            self.turned_away += 1
        return turn

    async def wait_turn(self, peer: str, patience: float) -> Turn | None:
        """`admit`, waiting up to `patience` seconds for a turn to finish or stall: a
        slot taken by a reader that stops is free within `slot_stall`, and a request
        that waits that long for it is served sooner than one sent away to come back
        after a BUSY pause."""
        turn = self.try_turn(peer)
        with trio.move_on_after(patience):
            while turn is None:
                await self._change.wait()
                turn = self.try_turn(peer)
        if turn is None:
            self.turned_away += 1
        return turn

    def try_turn(self, peer: str) -> Turn | None:
        """`admit` without counting a refusal (the caller may wait and try again)."""
        held = self._holders.get(peer)
        if (
            (held is None and len(self._holders) >= self.slots)
            or peer in self._stalled
            or self._replies.get(peer, 0) >= self.replies_per_peer
            or self.in_flight >= self.reply_bytes
        ):
            return None
        self._holders[peer] = (held or 0) + 1
        self._replies[peer] = self._replies.get(peer, 0) + 1
        return Turn(self, peer)

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    def _unhold(self, peer: str) -> None:
        _decrement(self._holders, peer)

    @property
    def busy(self) -> int:
        """Peers holding a slot."""
        return len(self._holders)


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
