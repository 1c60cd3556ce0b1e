"""When background upkeep may run: not while Nix waits on the gateway.

Writing a DHT provider record walks the DHT (streams, noise, CPU on both ends); a node
that substitutes a closure for Nix would otherwise spend a third of its CPU announcing
each path as it lands, while Nix waits. Others can wait for the records; Nix cannot.
"""

from __future__ import annotations

import trio


class Quiet:
    """`hold()` on each request that someone waits for; `wait(since)` returns once no
    request came for `quiet` seconds, or at `since + latest` at the latest (a busy
    gateway does not starve upkeep for ever)."""

    def __init__(self, quiet: float, latest: float) -> None:
        self.quiet = quiet
        self.latest = latest
        self._until = -float("inf")

    def hold(self) -> None:
        self._until = trio.current_time() + self.quiet

    async def wait(self, since: float) -> None:
        deadline = since + self.latest
        # Each pass sleeps until the hold ends or the deadline; a new hold only moves the
        # first, so the loop ends by the deadline.
        while True:
            wake = min(self._until, deadline)
            if trio.current_time() >= wake:
                return
            await trio.sleep_until(wake)
