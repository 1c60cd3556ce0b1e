"""Planning a closure's paths together (`Fetch.plan_many`, which the gateway uses to work
ahead of Nix): the same plans as one path at a time, in a few streams, and nothing that
a path-at-a-time plan would refuse. Real Fetch, claims and block servers, over the
simulator's in-memory streams."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from node.exchange.fetch import Fetch, FetchSettings, Plan
from node.exchange.memory import MemoryStore
from node.exchange.server import serve_blocks, serve_claims
from p2p import claimwire
from p2p.blocks import PROTOCOL as BLOCKS
from p2p.stream import read_some, write
from sim.host import SimHost, SimStream, World
from store import build, export
from store.path import StorePath
from trust.claim import sign_manifest
from trust.key import SecretKey
from trust.policy import QuorumPolicy

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
PATHS = 300  # more than one GETS holds


def _hash(i: int) -> str:
    return "".join(NIX32[(i >> (5 * k)) % 32] for k in range(32))


def _publish(
    store: MemoryStore,
    tmp: Path,
    sp: StorePath,
    text: str,
    key: SecretKey,
    references: list[StorePath] | None = None,
) -> None:
    """`sp`, one file holding `text`, signed by `key`, into `store`."""
    d = tmp / sp.name
    d.mkdir()
    (d / "file").write_text(text)
    chunks = export.MemoryChunks()
    m = build.from_directory(
        str(d), sp, references=references or (), on_chunk=chunks.add, workers=0
    )
    store.add_path(m, chunks.chunks, [sign_manifest(m, key)])


def _paths(
    tmp: Path, builder: SecretKey, outsider: SecretKey
) -> tuple[MemoryStore, list[StorePath]]:
    """A builder's store: PATHS paths signed by `builder`, and one signed only by
    `outsider` (the last)."""
    store = MemoryStore()
    paths = []
    for i in range(PATHS + 1):
        sp = StorePath("/nix/store", _hash(i), f"pkg{i}-1.0")
        _publish(store, tmp, sp, f"contents of {i}\n", outsider if i == PATHS else builder)
        paths.append(sp)
    return store, paths


Handler = Callable[[SimStream, str], Awaitable[None]]


def _serve(host: SimHost, store: MemoryStore, opened: Counter[str], gets: bool = True) -> None:
    async def violation(peer: str, problem: str) -> None:
        await host.punish(peer, problem)

    def counted(protocol: str, handler: Handler) -> Handler:
        async def h(stream: SimStream, peer: str) -> None:
            opened[protocol] += 1
            await handler(stream, peer)

        return h

    host.handlers[BLOCKS] = counted(
        BLOCKS, lambda s, peer: serve_blocks(s, peer, store, violation, lambda n, b: None)
    )
    claims = counted(claimwire.PROTOCOL, lambda s, peer: serve_claims(s, peer, store, violation))
    host.handlers[claimwire.PROTOCOL] = claims
    if gets:
        host.handlers[claimwire.PROTOCOL_GETS] = counted(
            claimwire.PROTOCOL_GETS, lambda s, peer: serve_claims(s, peer, store, violation)
        )


async def test_a_closure_is_planned_in_a_few_streams_as_one_path_at_a_time_would(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder, outsider = SecretKey.generate("builder-1"), SecretKey.generate("outsider-1")
    server, paths = _paths(tmp_path, builder, outsider)
    policy = QuorumPolicy((builder.public,), 1)
    unknown = _hash(10_000)
    opened: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")
        _serve(srv, server, opened)
        cli.connect("server")
        client = MemoryStore()
        fetch = Fetch(cli, client, policy, FetchSettings(request_timeout=5))
        with trio.fail_after(60):
            plans = await fetch.plan_many([sp.hash_part for sp in paths] + [unknown], "/nix/store")
        # Two GETS (256 + 45 hashes), one blocks stream for every manifest.
        assert opened == {claimwire.PROTOCOL_GETS: 2, BLOCKS: 1}
        # The trusted paths, and neither the outsider's nor the unknown one: those are
        # for a plan of their own to refuse, with its reasons.
        assert set(plans) == {sp.hash_part for sp in paths[:PATHS]}
        one: list[Plan] = []
        for sp in (paths[0], paths[PATHS - 1]):
            one.append(
                await Fetch(cli, MemoryStore(), policy).plan_hash(sp.hash_part, "/nix/store")
            )
        for p in one:
            mine = plans[p.store_path.hash_part]
            assert (mine.store_path, mine.manifest, mine.verdict.outcome, mine.complete) == (
                p.store_path,
                p.manifest,
                p.verdict.outcome,
                False,
            )
        assert cli.punished == []
        nursery.cancel_scope.cancel()


async def test_manifests_a_peer_lacks_are_asked_of_the_next(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder, outsider = SecretKey.generate("builder-1"), SecretKey.generate("outsider-1")
    server, paths = _paths(tmp_path, builder, outsider)
    relay = MemoryStore()  # heard the claims (gossip), holds no path: asked first
    await relay.learn([c for sp in paths for c in await server.claims(sp.hash_part)], "gossip")
    opened: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        rel, srv, cli = world.add("0-relay"), world.add("server"), world.add("client")
        _serve(rel, relay, opened)
        _serve(srv, server, opened)
        cli.connect("0-relay")
        cli.connect("server")
        fetch = Fetch(cli, MemoryStore(), QuorumPolicy((builder.public,), 1))
        with trio.fail_after(60):
            plans = await fetch.plan_many([sp.hash_part for sp in paths], "/nix/store")
        assert set(plans) == {sp.hash_part for sp in paths[:PATHS]}
        assert opened[BLOCKS] == 2  # the relay's DONT_HAVEs, then the server's blocks
        nursery.cancel_scope.cancel()


async def test_a_peer_that_speaks_only_claims_1_is_left_to_plan_one_path_at_a_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder, outsider = SecretKey.generate("builder-1"), SecretKey.generate("outsider-1")
    server, paths = _paths(tmp_path, builder, outsider)
    opened: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")
        _serve(srv, server, opened, gets=False)
        cli.connect("server")
        fetch = Fetch(cli, MemoryStore(), QuorumPolicy((builder.public,), 1))
        with trio.fail_after(60):
            assert await fetch.plan_many([sp.hash_part for sp in paths], "/nix/store") == {}
            plan = await fetch.plan_hash(paths[0].hash_part, "/nix/store")
        assert plan.store_path == paths[0]
        assert cli.punished == [] and srv.punished == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("lie", ["other-path", "extra-answer"])
async def test_answers_that_break_gets_count_for_nothing(
    lie: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder, outsider = SecretKey.generate("builder-1"), SecretKey.generate("outsider-1")
    server, paths = _paths(tmp_path, builder, outsider)
    a, b, c = paths[0], paths[1], paths[2]
    claim_b = (await server.claims(b.hash_part))[0].encode()
    claim_c = (await server.claims(c.hash_part))[0].encode()

    async def lying(stream: SimStream, peer: str) -> None:
        reader = claimwire.Reader()
        while reader.receive_data(await read_some(stream)) is None:
            pass
        # a's answer holds c's claim: a claim counts only for the hash it was asked under.
        answers = [claimwire.Claims((claim_c,)), claimwire.Claims((claim_b,))]
        if lie == "extra-answer":
            answers.append(claimwire.Claims(()))
        await write(stream, b"".join(claimwire.encode(m) for m in answers))

    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")
        _serve(srv, server, Counter())
        srv.handlers[claimwire.PROTOCOL_GETS] = lying
        cli.connect("server")
        client = MemoryStore()
        fetch = Fetch(cli, client, QuorumPolicy((builder.public,), 1))
        with trio.fail_after(60):
            plans = await fetch.plan_many([a.hash_part, b.hash_part], "/nix/store")
        if lie == "other-path":
            assert set(plans) == {b.hash_part}
            assert await client.claims(c.hash_part) == []  # not even kept
            assert cli.punished == []
        else:
            assert plans == {}
            assert [p for p, _ in cli.punished] == ["server"]
            assert "more than the 2 answers" in cli.punished[0][1]
        nursery.cancel_scope.cancel()


async def test_what_a_slow_peer_answered_in_time_is_planned(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder, outsider = SecretKey.generate("builder-1"), SecretKey.generate("outsider-1")
    server, paths = _paths(tmp_path, builder, outsider)
    policy = QuorumPolicy((builder.public,), 1)
    answered = 100

    async def slow_gets(stream: SimStream, peer: str) -> None:
        # The first `answered` hashes at once, then nothing: a peer busy serving others.
        reader = claimwire.Reader()
        while (gets := reader.receive_data(await read_some(stream))) is None:
            pass
        assert isinstance(gets, claimwire.Gets)
        for h in gets.path_hashes[:answered]:
            found = tuple(c.encode() for c in await server.claims(h))
            await write(stream, claimwire.encode(claimwire.Claims(found)))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")
        _serve(srv, server, Counter())
        srv.handlers[claimwire.PROTOCOL_GETS] = slow_gets
        cli.connect("server")
        fetch = Fetch(cli, MemoryStore(), policy, FetchSettings(claims_timeout=3))
        with trio.fail_after(60):
            plans = await fetch.plan_many([sp.hash_part for sp in paths[:200]], "/nix/store")
        # The answers that came count; the rest are left for a plan of their own.
        assert set(plans) == {sp.hash_part for sp in paths[:answered]}
        assert cli.punished == []
        nursery.cancel_scope.cancel()


async def test_a_peer_that_never_opens_the_stream_leaves_the_batch_to_plan_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    builder, outsider = SecretKey.generate("builder-1"), SecretKey.generate("outsider-1")
    server, paths = _paths(tmp_path, builder, outsider)
    policy = QuorumPolicy((builder.public,), 1)
    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")
        _serve(srv, server, Counter())
        cli.connect("server")
        opened = cli.open_stream

        async def hung(peer: str, protocol: str) -> SimStream:
            if protocol == claimwire.PROTOCOL_GETS:
                await trio.sleep_forever()  # the deadline passes while the stream opens
            return await opened(peer, protocol)

        cli.open_stream = hung  # type: ignore[method-assign]
        fetch = Fetch(cli, MemoryStore(), policy, FetchSettings(claims_timeout=3))
        with trio.fail_after(60):
            plans = await fetch.plan_many([sp.hash_part for sp in paths[:10]], "/nix/store")
        assert plans == {}  # nothing answered: each path is for plan_hash
        nursery.cancel_scope.cancel()


async def test_a_closure_fetch_plans_a_level_of_references_in_one_batch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """`ferry fetch --closure`: the root alone, then the 20 paths it refers to in one
    GETS and one blocks stream, not a claims and a blocks stream each (most of the bytes
    of a mass-rebuild update on the wire, before)."""
    builder = SecretKey.generate("builder-1")
    server = MemoryStore()
    deps = []
    for i in range(20):
        sp = StorePath("/nix/store", _hash(i), f"dep{i}-1.0")
        _publish(server, tmp_path, sp, f"dependency {i}\n", builder)
        deps.append(sp)
    root = StorePath("/nix/store", _hash(99), "profile-1.0")
    _publish(server, tmp_path, root, "\n".join(map(str, deps)), builder, deps)
    opened: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        world = World(nursery, random.Random(1))
        srv, cli = world.add("server"), world.add("client")
        _serve(srv, server, opened)
        cli.connect("server")
        fetch = Fetch(cli, MemoryStore(), QuorumPolicy((builder.public,), 1))
        with trio.fail_after(60):
            plans = await fetch.resolve(root, closure=True)
        assert [p.store_path for p in plans] == [root, *deps]
        # The root: a claims and a blocks stream; its references: one of each.
        assert opened == {claimwire.PROTOCOL: 1, claimwire.PROTOCOL_GETS: 1, BLOCKS: 2}
        assert cli.punished == []
        nursery.cancel_scope.cancel()
