"""Background upkeep waits while Nix waits on the gateway, but not for ever."""

from __future__ import annotations

import trio

from node.daemon.quiet import Quiet


class Upkeep:
    """A task that waits its turn from now; `done` holds when it ran (seconds since)."""

    def __init__(self, quiet: Quiet) -> None:
        self.quiet = quiet
        self.start = trio.current_time()
        self.done: list[float] = []

    async def run(self) -> None:
        await self.quiet.wait(self.start)
        self.done.append(trio.current_time() - self.start)


async def test_upkeep_runs_once_requests_stop(autojump_clock: trio.abc.Clock) -> None:
    quiet = Quiet(2.0, 120.0)
    upkeep = Upkeep(quiet)
    async with trio.open_nursery() as nursery:
        quiet.hold()
        nursery.start_soon(upkeep.run)
        for _ in range(5):  # a request each second for 5 s
            await trio.sleep(1.0)
            assert not upkeep.done
            quiet.hold()
    assert upkeep.done == [7.0]  # the last request at 5 s, then 2 s of quiet


async def test_a_busy_gateway_does_not_starve_upkeep(autojump_clock: trio.abc.Clock) -> None:
    quiet = Quiet(2.0, 10.0)
    upkeep = Upkeep(quiet)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upkeep.run)
        for _ in range(30):
            quiet.hold()
            await trio.sleep(0.5)
    assert upkeep.done == [10.0]


async def test_no_request_no_wait(autojump_clock: trio.abc.Clock) -> None:
    quiet = Quiet(2.0, 10.0)
    start = trio.current_time()
    await quiet.wait(start)
    assert trio.current_time() == start
