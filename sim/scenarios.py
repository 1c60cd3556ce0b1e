"""The simulator's scenarios: each builds a network of `SimNode`s, runs it in virtual time
and returns a `SimResult`. Deterministic for a seed (given PYTHONHASHSEED, which
`ferry sim run` pins).

Models, as opposed to ferry's code: the links (`sim.link`), the DHT (`sim.host`), who is
connected to whom (each node keeps `degree` random connections besides its bootstrap
peers, as its DHT routing table would give it), and the central-server baseline (a fluid
model: the server's uplink shared max-min fairly, each client capped by its downlink).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import random
import resource
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from node.exchange.fetch import FetchSettings
from p2p import witnesswire
from sim.content import Release, key, lie_about, release
from sim.host import World
from sim.link import LinkSpec
from sim.node import NodeResult, Role, SimNode
from sim.params import SCENARIOS, Params
from trust import treehead
from trust.claim import SignedClaim
from trust.key import SecretKey
from trust.logged import LoggedClaim
from trust.merkle import Tree
from trust.policy import OnConflict, QuorumPolicy


@dataclass
class SimResult:
    scenario: str
    params: dict[str, Any]
    nodes: list[NodeResult]
    closure_bytes: int  # as the links carry it
    virtual_seconds: float
    timeline: list[dict[str, float]]  # samples: t, seed egress, fetchers completed
    baseline: dict[str, Any] | None = None
    wall_seconds: float = 0.0
    peak_memory_mb: float = 0.0  # peak RSS of the process
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "params": self.params,
            "closure_bytes": self.closure_bytes,
            "virtual_seconds": round(self.virtual_seconds, 3),
            "summary": summary(self),
            "baseline": self.baseline,
            "notes": self.notes,
            "timeline": self.timeline,
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
        }


def summary(r: SimResult) -> dict[str, Any]:
    fetchers = [n for n in r.nodes if n.role == Role.FETCHER.value]
    times = sorted(n.completion_time for n in fetchers if n.completion_time is not None)
    sources = [n for n in r.nodes if n.role in (Role.SEED.value, Role.BUILDER.value)]
    return {
        "fetchers": len(fetchers),
        "completed": sum(n.completed for n in fetchers),
        "p50": _pct(times, 50),
        "p95": _pct(times, 95),
        "max": times[-1] if times else None,
        "seed_egress_bytes": sum(n.bytes_up for n in sources),
        "seed_egress_closures": round(sum(n.bytes_up for n in sources) / r.closure_bytes, 3),
        "bad_blocks_received": sum(n.bad_blocks_received for n in fetchers),
        "bad_blocks_stored": sum(n.bad_blocks_stored for n in r.nodes),
        "fetchers_trusting": sum(bool(n.paths_trusted) for n in fetchers),
    }


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    return round(xs[min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1)], 3)


# --- the runner


class _Run:
    """One simulation: the world, its nodes, and the loops that drive them."""

    def __init__(self, nursery: trio.Nursery, p: Params) -> None:
        self.p = p
        self.rng = random.Random(p.seed)
        self.world = World(nursery, self.rng)
        self.nodes: list[SimNode] = []
        self.timeline: list[dict[str, float]] = []
        self.settings = FetchSettings(request_timeout=10.0, claims_timeout=5.0, connect_timeout=5.0)
        self.t0 = trio.current_time()
        # The flash crowd's workload, for the central-server baseline.
        self.starts: list[float] = []
        self.seed_spec: LinkSpec | None = None

    def add(
        self, name: str, role: Role, policy: QuorumPolicy | None, spec: LinkSpec | None = None
    ) -> SimNode:
        n = SimNode(
            self.world,
            name,
            role,
            spec or LinkSpec.home(self.rng),
            policy,
            settings=self.settings,
            scale=self.p.scale,
            order_seed=f"{self.p.seed}-{name}",
        )
        self.nodes.append(n)
        return n

    def wire(self, fetchers: list[SimNode], bootstrap: list[SimNode]) -> None:
        for f in fetchers:
            for b in bootstrap:
                f.host.connect(b.name)
            for other in self.rng.sample(
                fetchers, min(self.p.degree, len(fetchers) - 1) if len(fetchers) > 1 else 0
            ):
                f.host.connect(other.name)

    async def fetch_until_done(
        self,
        node: SimNode,
        root: Any,
        start: float,
        online: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        await trio.sleep(start)
        for _ in range(200):  # bounded: a node that cannot finish in 200 attempts gives up
            if online is not None:
                await online()
            with trio.CancelScope() as node.attempt:
                if await node.fetch(root) or node.refused:
                    return
            await trio.sleep(5.0)

    async def sample(self, sources: list[SimNode], fetchers: list[SimNode]) -> None:
        while True:
            self.timeline.append(
                {
                    "t": round(trio.current_time() - self.t0, 3),
                    "seed_egress": sum(s.host.endpoint.up.bytes for s in sources),
                    "completed": sum(f.result.completed for f in fetchers),
                }
            )
            await trio.sleep(5.0)


def _closure_real_bytes(p: Params) -> int:
    return int(p.closure_mb * 1e6 / p.scale)


def _clock_run(body: Callable[[_Run], Awaitable[list[str]]], name: str, p: Params) -> SimResult:
    """Runs `body` under a mock clock that jumps whenever every task waits."""
    wall = time.monotonic()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            run = _Run(nursery, p)
            with trio.move_on_after(p.deadline):
                out["notes"] = await body(run)
            out["run"] = run
            out["virtual"] = trio.current_time() - run.t0
            nursery.cancel_scope.cancel()

    # A thousand nodes keep millions of objects alive; the default thresholds make the
    # collector walk all of them again and again. Collect less often while the run lasts.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        with _repeatable_scheduling(p.seed):
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        gc.set_threshold(*thresholds)
    # Peak resident memory of the whole process (tracemalloc would slow the run twofold).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run: _Run = out["run"]
    res = SimResult(
        name,
        dataclasses.asdict(p),
        [n.finish() for n in run.nodes],
        int(p.closure_mb * 1e6),
        out["virtual"],
        run.timeline,
        notes=out.get("notes") or [],
    )
    if name == "flash-crowd" and run.seed_spec is not None:
        res.baseline = _baseline(run.starts, run.seed_spec, int(p.closure_mb * 1e6))
    if res.virtual_seconds >= p.deadline - 1e-6:
        res.notes.append(f"the run was called off at the deadline ({p.deadline:.0f} s simulated)")
    res.wall_seconds = round(time.monotonic() - wall, 2)
    res.peak_memory_mb = round(peak / 1e6, 1)
    return res


@contextlib.contextmanager
def _repeatable_scheduling(seed: int) -> Iterator[None]:
    """trio runs each batch of ready tasks in an order that depends on object addresses:
    deadlines that fall at the same instant (common in virtual time) expire in order of
    `id(cancel_scope)`, and a cancelled scope reschedules its tasks from a set. In the
    mode trio keeps for Hypothesis, each batch is sorted by task creation order and then
    shuffled by trio's own generator; seeded, a run repeats exactly."""
    run = trio._core._run  # type: ignore[attr-defined]
    before = run._ALLOW_DETERMINISTIC_SCHEDULING
    run._ALLOW_DETERMINISTIC_SCHEDULING = True
    run._r.seed(seed)
    try:
        yield
    finally:
        run._ALLOW_DETERMINISTIC_SCHEDULING = before


def central_baseline(
    starts: list[float], size: float, server_up: float, client_down: float, rtt: float
) -> list[float]:
    """Completion times (from each client's start) when every client downloads `size`
    bytes from one server: its uplink shared max-min fairly among active clients, each
    capped by its downlink (a fluid model of TCP fair sharing)."""
    events = sorted((s, i) for i, s in enumerate(starts))
    left: dict[int, float] = {}
    done = [0.0] * len(starts)
    now = 0.0
    pending = list(events)
    while pending or left:
        n = len(left)
        rate = min(client_down, server_up / n) if n else 0.0
        next_start = pending[0][0] if pending else math.inf
        least = min(left.values()) if n else math.inf
        next_end = now + least / rate if n else math.inf
        t = min(next_start, next_end)
        for i in left:
            left[i] -= rate * (t - now)
        now = t
        # Within half a byte is done: rounding leaves crumbs that would otherwise take
        # steps of nanoseconds (for ever, at some sizes).
        for i in [i for i, b in left.items() if b <= max(1e-6, size * 1e-9)]:
            done[i] = now - starts[i] + rtt * 2  # connection and request
            del left[i]
        while pending and pending[0][0] <= now:
            left[pending.pop(0)[1]] = size
    return done


def _baseline(starts: list[float], seed_spec: LinkSpec, size: int) -> dict[str, Any]:
    times = sorted(central_baseline(starts, size, seed_spec.up, 100e6 / 8, 2 * seed_spec.latency))
    return {
        "model": "fluid: one server with the seed's uplink shared max-min fairly, clients capped by "
        "their downlink",
        "p50": _pct(times, 50),
        "p95": _pct(times, 95),
        "max": times[-1],
        "server_egress_closures": len(starts),
    }


# --- the scenarios


async def _flash(run: _Run, *, churn: bool = False, bad: bool = False) -> list[str]:
    p = run.p
    builder = key(run.rng, "builder-1")
    policy = QuorumPolicy((builder.public,), 1)
    rel = release(run.rng, paths=p.paths, real_bytes=_closure_real_bytes(p))
    claims = {sp: [c] for sp, c in rel.claims(builder).items()}
    seed = run.add("seed", Role.SEED, None)
    seed.hold(rel, claims)
    fetchers = [run.add(f"fetcher-{i:04d}", Role.FETCHER, policy) for i in range(p.nodes)]
    run.wire(fetchers, [seed])
    notes = []
    if bad:
        kinds = [Role.CORRUPT, Role.TRUNCATE, Role.STALL]
        liars = [
            run.add(f"bad-{i:04d}", kinds[i % 3], None)
            for i in range(max(3, round(p.bad_fraction * p.nodes)))
        ]
        for b in liars:
            b.hold(rel, claims)
            for f in run.rng.sample(fetchers, min(len(fetchers), max(2, p.degree))):
                f.host.connect(b.name)
        notes.append(
            f"{len(liars)} misbehaving peers hold the claims and serve spoiled chunks or stall; "
            "each is connected to some fetchers"
        )
    starts = [run.rng.uniform(0, p.stagger) for _ in fetchers]
    # The baseline's workload: known before the run, so a run cut off by the deadline has it too.
    run.starts = starts
    run.seed_spec = seed.host.endpoint.spec
    async with trio.open_nursery() as n:
        n.start_soon(run.sample, [seed], fetchers)
        async with trio.open_nursery() as fetching:
            for f, s in zip(fetchers, starts):
                if churn:
                    fetching.start_soon(_churning, run, f, rel, s, [seed], fetchers)
                else:
                    fetching.start_soon(run.fetch_until_done, f, rel.root, s)
        n.cancel_scope.cancel()
    return notes


async def _churning(
    run: _Run,
    node: SimNode,
    rel: Release,
    start: float,
    bootstrap: list[SimNode],
    everyone: list[SimNode],
) -> None:
    back = trio.Event()
    back.set()
    state = {"back": back}

    async def online() -> None:
        await state["back"].wait()

    async def churn() -> None:
        await trio.sleep(start)
        for _ in range(100):  # bounded
            await trio.sleep(run.rng.expovariate(run.p.churn / 60.0))
            if node.result.completed:
                return
            state["back"] = trio.Event()
            node.host.leave()
            node.attempt.cancel()
            await trio.sleep(run.rng.uniform(5.0, run.p.downtime))
            peers = [b.name for b in bootstrap] + [
                o.name for o in run.rng.sample(everyone, min(run.p.degree, len(everyone)))
            ]
            node.host.rejoin([x for x in peers if x != node.name])
            state["back"].set()

    async with trio.open_nursery() as n:
        n.start_soon(churn)
        await run.fetch_until_done(node, rel.root, start, online)
        n.cancel_scope.cancel()


async def flash_crowd(run: _Run) -> list[str]:
    return await _flash(run)


async def churn(run: _Run) -> list[str]:
    notes = await _flash(run, churn=True)
    return notes + [
        f"each online fetcher drops off with probability {run.p.churn} per minute and comes back "
        f"within 5-{run.p.downtime:.0f} s, keeping what it fetched"
    ]


async def byzantine_peers(run: _Run) -> list[str]:
    return await _flash(run, bad=True)


async def fleet_update(run: _Run) -> list[str]:
    p = run.p
    keys_ = [key(run.rng, f"builder-{i}") for i in range(1, 4)]
    policy = QuorumPolicy(tuple(k.public for k in keys_), 2)
    old = release(run.rng, paths=p.paths, real_bytes=_closure_real_bytes(p))
    new = release(run.rng, paths=p.paths, real_bytes=_closure_real_bytes(p), previous=old)
    signed: dict[Any, list] = {}
    for k in keys_:
        for sp, c in new.claims(k).items():
            signed.setdefault(sp, []).append(c)
    builders = [
        run.add(
            f"builder-{i}", Role.BUILDER, None, LinkSpec(up=100e6 / 8, down=100e6 / 8, latency=0.01)
        )
        for i in range(1, 4)
    ]
    for b in builders:
        b.hold(old, {})
        b.hold(new, signed)
    fleet = [run.add(f"fetcher-{i:04d}", Role.FETCHER, policy) for i in range(p.nodes)]
    for f in fleet:
        f.hold(old, {})
    run.wire(fleet, builders)
    starts = [run.rng.uniform(0, p.stagger) for _ in fleet]
    async with trio.open_nursery() as n:
        n.start_soon(run.sample, builders, fleet)
        async with trio.open_nursery() as fetching:
            for f, s in zip(fleet, starts):
                fetching.start_soon(run.fetch_until_done, f, new.root, s)
        n.cancel_scope.cancel()
    changed = {d for p_ in new.paths for d in p_.chunks} - {
        d for p_ in old.paths for d in p_.chunks
    }
    return [
        f"the fleet holds the old generation; {len(changed)} of {sum(len(p_.chunks) for p_ in new.paths)} "
        "chunks of the new one are new, and travel as diffs against the old ones; 3 builders (100 Mbit/s "
        "symmetric) publish it, policy 2 of 3"
    ]


async def byzantine_builders(run: _Run) -> list[str]:
    p = run.p
    keys_ = [key(run.rng, f"builder-{i}") for i in range(1, 4)]
    policy = QuorumPolicy(tuple(k.public for k in keys_), 2, OnConflict(p.on_conflict))
    honest = release(run.rng, paths=p.paths, real_bytes=_closure_real_bytes(p))
    lie = lie_about(run.rng, honest)
    builders = [
        run.add(f"builder-{i}", Role.BUILDER if i < 3 else Role.LIAR, None) for i in range(1, 4)
    ]
    for b, k in zip(builders, keys_):
        rel = honest if b.role is Role.BUILDER else lie
        b.hold(rel, {sp: [c] for sp, c in rel.claims(k).items()})
    sybils = []
    for i in range(p.sybils):
        s = run.add(f"sybil-{i:03d}", Role.SYBIL, None)
        s.hold(lie, {sp: [c] for sp, c in lie.claims(key(run.rng, f"sybil-{i:03d}")).items()})
        sybils.append(s)
    fetchers = [run.add(f"fetcher-{i:04d}", Role.FETCHER, policy) for i in range(p.nodes)]
    run.wire(fetchers, builders)
    for f in fetchers:
        for s in run.rng.sample(sybils, min(len(sybils), 10)):
            f.host.connect(s.name)
    starts = [run.rng.uniform(0, p.stagger) for _ in fetchers]
    # The liar also tells two stories: one branch of its log to half the fetchers, another
    # to the rest, at the start. Fetchers pass on what they are told (node.daemon.witness).
    stories = _two_stories(
        run.rng, keys_[2], honest.claims(keys_[2])[honest.root], lie.claims(keys_[2])[honest.root]
    )
    told_at = trio.current_time()
    for i, f in enumerate(fetchers):
        if p.liar == "equivocates":
            run.world.nursery.start_soon(
                builders[2].tell, f.name, witnesswire.PUSH_PROTOCOL, stories[i % 2].encode()
            )
    async with trio.open_nursery() as n:
        n.start_soon(run.sample, builders[:2], fetchers)
        async with trio.open_nursery() as fetching:
            for f, at in zip(fetchers, starts):
                fetching.start_soon(run.fetch_until_done, f, honest.root, at)
        n.cancel_scope.cancel()
    caught = sorted(f.caught_at - told_at for f in fetchers if f.caught_at is not None)
    return [
        f"builder-3 signs other contents for the same store paths; {p.sybils} keys outside the policy sign "
        f"the same lie and serve it; each fetcher is connected to 10 of them; policy 2 of 3, on_conflict "
        f"{p.on_conflict}",
        *(
            [
                f"builder-3 also tells two stories: half the fetchers are handed one branch of its log, "
                f"half another; fetchers pass on what they are told. {len(caught)} of {len(fetchers)} "
                "caught it"
                + (
                    f", the last {caught[-1]:.2f} s after the stories went out (median "
                    f"{caught[len(caught) // 2]:.2f} s); a caught key counts for nothing"
                    if caught
                    else ""
                )
            ]
            if p.liar == "equivocates"
            else []
        ),
    ]


def _two_stories(
    rng: random.Random, k: SecretKey, one: SignedClaim, other: SignedClaim
) -> tuple[LoggedClaim, LoggedClaim]:
    """Two branches of one log of `k`, each one leaf long: `one` in the first, `other` in
    the second."""
    log_id = rng.randbytes(16)
    out = []
    for c in (one, other):
        tree = Tree()
        tree.append(c.claim.encode())
        head = treehead.sign(k, log_id, 1, tree.root(), 1_700_000_000)
        out.append(LoggedClaim(c, head, 0, tuple(tree.inclusion(0))))
    return out[0], out[1]


_BODIES: dict[str, Callable[[_Run], Awaitable[list[str]]]] = {
    "flash-crowd": flash_crowd,
    "fleet-update": fleet_update,
    "churn": churn,
    "byzantine-peers": byzantine_peers,
    "byzantine-builders": byzantine_builders,
}
assert _BODIES.keys() == SCENARIOS.keys()


def run(name: str, p: Params) -> SimResult:
    """Runs scenario `name` (a key of SCENARIOS) with parameters `p`."""
    return _clock_run(_BODIES[name], name, p)
