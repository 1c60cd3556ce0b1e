"""Working ahead of Nix on a closure: what the gateway plans and fetches before Nix asks.

Nix substitutes a closure in two waves. It asks for the top path's narinfo, then for
the narinfos of everything it refers to (25 at a time), and only then downloads NARs
(a couple at a time). Asked path by path, each narinfo costs two streams to a peer (the
claims, the manifest) and each NAR a fetch session of its own: tens of milliseconds a
path, most of it waiting.

- **Plans ahead.** Once a path is planned, its references that a connected peer lists
  are planned together (`Fetch.plan_many`: a few hundred claims on one stream, the
  manifests on one stream a peer) and kept for `HIT_TTL`; a narinfo asked meanwhile
  waits for its batch rather than asking on its own.
- **Fills ahead.** A small path whose narinfo Nix asked, and that the store lacks, is
  fetched with the other such paths of the moment in one session (two at a time); its
  NAR request streams from the store as the session brings the chunks, or, if the
  session has not started, calls it off and fetches for itself.

Whatever is left out (a peer that did not answer, a refusal, a failed fill) is done the
ordinary way when Nix asks: working ahead never changes an answer, only when it is ready.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.exchange.fetch import Plan

log = logging.getLogger(__name__)

PLAN_BATCH = 512  # hashes planned together
PLAN_SESSIONS = 4  # batches planned at once
FILL_MAX = 1 << 20  # NAR bytes of a path filled ahead (larger ones stream on their own)
FILL_BATCH = 64 << 20  # NAR bytes filled in one session
FILL_SESSIONS = 2  # fill sessions at once
HIT_TTL = 30.0  # seconds a plan made ahead waits to be asked for (as the gateway's hits)
REMEMBERED = 1 << 16  # hashes planned (or tried) ahead, kept so they are not asked again


class Ahead:
    """The two queues and their one worker each; `run` in the nursery of the gateway."""

    def __init__(
        self,
        plan_many: Callable[[list[str]], Awaitable[dict[str, Plan]]],
        fill: Callable[[list[Plan]], Awaitable[None]],
        worth_asking: Callable[[str], bool],
        count: Callable[[str, int], None] = lambda work, n: None,
    ) -> None:
        self._plan_many = plan_many
        self._fill = fill
        self._worth_asking = worth_asking  # a connected peer lists the hash
        self._count = count  # ("planned" | "filled", paths): the node's metrics
        self._plans: dict[str, tuple[Plan, float]] = {}  # hash -> plan, until
        self._tried: OrderedDict[str, None] = OrderedDict()  # queued once: never again
        self._to_plan: list[str] = []
        self._planning: dict[str, trio.Event] = {}  # hash -> its batch's end
        self._plan_wake = trio.Event()
        self._to_fill: OrderedDict[str, Plan] = OrderedDict()  # hash -> plan
        self._filling: dict[str, trio.Event] = {}  # hash -> its session's end
        self._fill_wake = trio.Event()
        self._filled: OrderedDict[tuple[str, bytes], None] = OrderedDict()  # complete now

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._planner)
            nursery.start_soon(self._filler)
            task_status.started()

    # --- plans

    async def plan(self, hash_part: str, wait: float) -> Plan | None:
        """The plan made ahead for `hash_part`, waiting up to `wait` seconds for the batch
        planning it; None: plan it yourself."""
        batch = self._planning.get(hash_part)
        if batch is not None:
            with trio.move_on_after(wait):
                await batch.wait()
        made = self._plans.pop(hash_part, None)
        if made is None or made[1] < trio.current_time():
            return None
        return made[0]

    def holds(self, hash_part: str) -> bool:
        """Whether a plan for `hash_part` is being made ahead or was made (ask `plan`)."""
        return hash_part in self._planning or hash_part in self._plans

    def planned(self, plan: Plan) -> None:
        """`plan` was made: plan its references ahead."""
        new = [
            r.hash_part
            for r in plan.manifest.references
            if r != plan.store_path
            and r.hash_part not in self._tried
            and self._worth_asking(r.hash_part)
        ]
        if not new:
            return
        for h in new:
            self._tried[h] = None
        while len(self._tried) > REMEMBERED:
            self._tried.popitem(last=False)
        self._to_plan += new
        self._plan_wake.set()

    async def _planner(self) -> None:
        sessions = trio.Semaphore(PLAN_SESSIONS)
        async with trio.open_nursery() as nursery:
            while True:
                await self._plan_wake.wait()
                self._plan_wake = trio.Event()
                while self._to_plan:
                    await sessions.acquire()
                    batch = self._to_plan[:PLAN_BATCH]
                    del self._to_plan[:PLAN_BATCH]
                    if not batch:
                        sessions.release()
                        break
                    done = trio.Event()
                    self._planning.update((h, done) for h in batch)
                    nursery.start_soon(self._plan_batch, batch, done, sessions)

    async def _plan_batch(
        self, batch: list[str], done: trio.Event, sessions: trio.Semaphore
    ) -> None:
        try:
            plans = await self._plan_many(batch)
        except Exception as e:  # noqa: BLE001 - each path is still planned when asked
            log.info("planning %d paths ahead failed: %s", len(batch), e)
            plans = {}
        finally:
            sessions.release()
            for h in batch:
                del self._planning[h]
            done.set()
        now = trio.current_time()
        self._plans = {h: v for h, v in self._plans.items() if v[1] > now}
        for h, p in plans.items():
            self._plans[h] = (p, now + HIT_TTL)
            self.planned(p)
        self._count("planned", len(plans))

    # --- fills

    def wanted(self, plan: Plan) -> None:
        """Nix asked for `plan`'s narinfo: a small path the store lacks is filled ahead."""
        h = plan.store_path.hash_part
        if (
            plan.complete
            or plan.manifest.nar_size > FILL_MAX
            or h in self._to_fill
            or h in self._filling
        ):
            return
        self._to_fill[h] = plan
        self._fill_wake.set()

    def filled(self, plan: Plan) -> bool:
        """Whether a fill ahead brought `plan`'s path complete (a NAR request then reads
        the store without asking it first)."""
        return (plan.store_path.hash_part, plan.verdict.manifest_digest) in self._filled

    def filling(self, hash_part: str) -> trio.Event | None:
        """For a NAR request: the end of the session filling `hash_part` ahead, if one
        runs (the path may be complete before it ends). A fill not yet started is called
        off: the request fetches for itself rather than wait behind other sessions."""
        self._to_fill.pop(hash_part, None)
        return self._filling.get(hash_part)

    async def _filler(self) -> None:
        sessions = trio.Semaphore(FILL_SESSIONS)
        async with trio.open_nursery() as nursery:
            while True:
                await self._fill_wake.wait()
                self._fill_wake = trio.Event()
                while self._to_fill:
                    # Paths asked for while the sessions run gather into the next batch.
                    await sessions.acquire()
                    batch: list[Plan] = []
                    size = 0
                    while self._to_fill and (not batch or size < FILL_BATCH):
                        batch.append(self._to_fill.popitem(last=False)[1])
                        size += batch[-1].manifest.nar_size
                    if not batch:
                        sessions.release()
                        break
                    done = trio.Event()
                    self._filling.update((p.store_path.hash_part, done) for p in batch)
                    nursery.start_soon(self._fill_session, batch, done, sessions)

    async def _fill_session(
        self, batch: list[Plan], done: trio.Event, sessions: trio.Semaphore
    ) -> None:
        try:
            await self._fill(batch)
            self._count("filled", len(batch))
            for p in batch:
                self._filled[p.store_path.hash_part, p.verdict.manifest_digest] = None
            while len(self._filled) > REMEMBERED:
                self._filled.popitem(last=False)
        except Exception as e:  # noqa: BLE001 - each NAR request fetches what it lacks
            log.info("fetching %d small paths ahead failed: %s", len(batch), e)
        finally:
            sessions.release()
            for p in batch:
                del self._filling[p.store_path.hash_part]
            done.set()
