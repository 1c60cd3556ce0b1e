"""Who gets this node's uplink now: upload slots, shared by all its block streams.

A node that many peers fetch from at once (a builder in a flash crowd) sends blocks to at
most `slots` peers at a time and answers the others' want-blocks BUSY; they ask other
peers and come back after a pause. Without slots the uplink is split among every asker,
so every chunk arrives at the very end and no fetcher has anything to pass on until then;
with them, chunks leave one after another and spread from the first recipients while the
builder sends the next ones (BitTorrent's unchoke slots do the same).

A peer holds a slot while a reply with blocks to it is being sent: peers take turns at
the pace of their requests, with no timers. No I/O and no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SLOTS = 8


@dataclass
class Uplink:
    slots: int = DEFAULT_SLOTS
    _holders: dict[str, int] = field(default_factory=dict)  # peer -> replies being sent to it
    turned_away: int = 0  # want batches answered BUSY for want of a slot

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError("an uplink needs at least one slot")

    def admit(self, peer: str) -> bool:
        """Whether blocks may go to `peer` now; if so, it holds a slot until `release`."""
        held = self._holders.get(peer)
        if held is None and len(self._holders) >= self.slots:
            self.turned_away += 1
            return False
        self._holders[peer] = (held or 0) + 1
        return True

    def release(self, peer: str) -> None:
        held = self._holders.get(peer, 0) - 1
        if held > 0:
            self._holders[peer] = held
        else:
            self._holders.pop(peer, None)

    @property
    def busy(self) -> int:
        """Peers holding a slot."""
        return len(self._holders)
