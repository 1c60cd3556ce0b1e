"""The gateway's parts without a network: Range parsing, NAR pieces and ranges rebuilt
from chunks, and the ASGI app's answers over a stand-in node."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.lowlevel
import trio.testing
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from node.exchange.fetch import FetchError, FetchRefused, NoClaims, NoPolicy, Plan
from node.gateway import ranges
from node.gateway.app import (
    HIT_TTL,
    Gateway,
    GatewaySettings,
    NarMismatch,
    NarReader,
    NarUnavailable,
)
from node.gateway.metrics import Metrics
from store import build, export, nar
from store.hash import Hash
from store.manifest import Manifest
from store.narinfo import NarInfo
from store.path import StorePath
from tests import trees
from trust.claim import sign_manifest
from trust.key import SecretKey
from trust.policy import QuorumPolicy, Trusted
from trust.signature import NixSignature, sign

SP = StorePath("/nix/store", "1" * 32, "thing-1.0")


def manifest_of(tree: trees.Node) -> tuple[Manifest, export.MemoryChunks, bytes]:
    data = nar.encode_bytes(trees.events(tree))
    chunks = export.MemoryChunks()
    return build.from_nar([data], SP, on_chunk=chunks.add), chunks, data


# --- Range


@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            "bytes={}-{}".format,
            st.from_regex(r"\A[0-9]{0,6000}\Z"),
            st.from_regex(r"\A[0-9]{0,6000}\Z"),
        ),
    ),
    st.integers(0, 10**12),
)
def test_any_range_header_is_a_range_within_the_body_or_a_refusal(header: str, size: int) -> None:
    try:
        r = ranges.parse(header, size)
    except ranges.Unsatisfiable:
        return
    assert r is None or 0 <= r.start <= r.end < size


def test_a_range_of_thousands_of_digits_is_not_a_500() -> None:
    with pytest.raises(ranges.Unsatisfiable):
        ranges.parse("bytes=" + "9" * 5000 + "-", 100)
    assert ranges.parse("bytes=0-" + "9" * 5000, 100) == ranges.ByteRange(0, 99)
    assert ranges.parse("bytes=-" + "9" * 5000, 100) == ranges.ByteRange(0, 99)


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_range_of_first_and_last(size: int, a: int, b: int) -> None:
    header = f"bytes={a}-{b}"
    if b < a:
        assert ranges.parse(header, size) is None  # invalid: the whole body
    elif a >= size:
        with pytest.raises(ranges.Unsatisfiable):
            ranges.parse(header, size)
    else:
        assert ranges.parse(header, size) == ranges.ByteRange(a, min(b, size - 1))


@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_range_open_ended_and_suffix(size: int, n: int) -> None:
    if n >= size:
        with pytest.raises(ranges.Unsatisfiable):
            ranges.parse(f"bytes={n}-", size)
    else:
        assert ranges.parse(f"bytes={n}-", size) == ranges.ByteRange(n, size - 1)
    if n == 0 or size == 0:
        with pytest.raises(ranges.Unsatisfiable):
            ranges.parse(f"bytes=-{n}", size)
    else:
        r = ranges.parse(f"bytes=-{n}", size)
        assert r == ranges.ByteRange(max(0, size - n), size - 1) and r.length == min(n, size)


@given(st.text(max_size=40), st.integers(0, 1000))
def test_range_never_fails_on_junk(header: str, size: int) -> None:
    try:
        r = ranges.parse(header, size)
    except ranges.Unsatisfiable:
        return
    assert r is None or 0 <= r.start <= r.end < size


def test_multiple_ranges_get_the_whole_body() -> None:
    assert ranges.parse("bytes=0-1,5-6", 100) is None
    assert ranges.parse("items=0-1", 100) is None


# --- NAR pieces


def _read_all(reader: NarReader) -> bytes:
    out = []
    while (piece := reader.next_piece()) is not None:
        out.append(piece)
    return b"".join(out)


@given(trees.trees(), st.data())
def test_nar_reader_whole_range_and_zstd(tree: trees.Node, data: st.DataObject) -> None:
    m, chunks, nar_bytes = manifest_of(tree)
    assert _read_all(NarReader(m, chunks, None, compress=False)) == nar_bytes
    a = data.draw(st.integers(0, len(nar_bytes) - 1))
    b = data.draw(st.integers(a, len(nar_bytes) - 1))
    assert (
        _read_all(NarReader(m, chunks, ranges.ByteRange(a, b), compress=False))
        == nar_bytes[a : b + 1]
    )
    z = _read_all(NarReader(m, chunks, None, compress=True))
    assert zstandard.ZstdDecompressor().decompressobj().decompress(z) == nar_bytes


def test_nar_reader_holds_back_the_end_of_a_nar_that_does_not_hash() -> None:
    tree = trees.Dir({b"big": trees.File(10_000_000, 1, False), b"x": trees.File(1, 2, False)})
    m, chunks, nar_bytes = manifest_of(tree)
    wrong = Manifest(
        **{
            **{f: getattr(m, f) for f in m.__dataclass_fields__},
            "nar_hash": Hash.sha256(b"\0" * 32),
        }
    )
    reader = NarReader(wrong, chunks, None, compress=False)
    got = b""
    with pytest.raises(NarMismatch):
        while (piece := reader.next_piece()) is not None:
            got += piece
    assert len(got) < len(nar_bytes)  # the client never sees a whole body


# --- the app


class StandIn:
    def __init__(
        self, plans: dict[str, Plan | Exception], chunks: export.MemoryChunks, key: SecretKey
    ) -> None:
        self.plans = plans
        self.chunks = chunks
        self.key = key
        self.completed: list[StorePath] = []
        self.asked: list[str] = []  # plan() calls: each would ask peers
        self.asked_now: list[str] = []  # missing_now() calls
        self.planned = trio.Event()  # plans are answered once this is set
        self.planned.set()
        self.fail_complete: Exception | None = None
        self.fetch: Callable[[Plan], Awaitable[None]] | None = None  # stands in for peers
        self._changed = trio.Event()

    async def plan(self, hash_part: str) -> Plan:
        self.asked.append(hash_part)
        await self.planned.wait()
        got = self.plans.get(hash_part)
        if got is None:
            raise NoClaims(hash_part)
        if isinstance(got, Exception):
            raise got
        return got

    def missing_now(self, hash_part: str) -> str | None:
        self.asked_now.append(hash_part)
        if hash_part in self.plans or not self.planned.is_set():
            return None
        return str(NoClaims(hash_part))

    async def plan_for_nar(self, nar_hash: Hash) -> Plan | None:
        return None

    async def complete(self, plan: Plan) -> None:
        if self.fetch is not None:
            await self.fetch(plan)
        if self.fail_complete:
            raise self.fail_complete
        self.completed.append(plan.store_path)

    def filled(self, plan: Plan) -> bool:
        return False

    def chunks_changed(self) -> trio.Event:
        return self._changed

    def add(self, chunks: dict[bytes, bytes]) -> None:
        self.chunks.chunks.update(chunks)
        self._changed.set()
        self._changed = trio.Event()

    def using(self, store_path):
        return contextlib.nullcontext()

    def chunk_source(self):
        return self.chunks, trio.CapacityLimiter(1)

    def sign(self, fingerprint: str) -> NixSignature:
        return sign(self.key, fingerprint)


async def call(
    app: Gateway, path: str, method: str = "GET", headers=()
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict) -> None:
        sent.append(msg)

    await app(
        {"type": "http", "method": method, "path": path, "headers": list(headers)}, receive, send
    )
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[-1].get("more_body", False) is False  # the body was finished
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


@pytest.fixture
def world():
    tree = trees.Dir({b"data": trees.File(3_000_000, 3, True), b"l": trees.Link(b"data")})
    m, chunks, nar_bytes = manifest_of(tree)
    builders = [SecretKey.generate(n) for n in ("builder-a", "builder-b", "builder-c")]
    policy = QuorumPolicy(tuple(k.public for k in builders), 2)
    verdict = policy.decide(SP, [sign_manifest(m, k) for k in builders[:2]])
    assert isinstance(verdict, Trusted)
    refused = policy.decide(SP, [sign_manifest(m, builders[0])])
    node_key = SecretKey.generate("ferry-test-1")
    backend = StandIn(
        {
            SP.hash_part: Plan(SP, m, verdict, False),
            "2" * 32: FetchRefused(SP, policy, refused),
            "3" * 32: NoPolicy("this node has no trust policy"),
            "4" * 32: FetchError("peers did not settle"),
        },
        chunks,
        node_key,
    )
    return (
        Gateway(backend, GatewaySettings(priority=25), Metrics()),
        backend,
        m,
        nar_bytes,
        node_key,
    )


async def test_cache_info_and_unknown_paths(world) -> None:
    app, *_ = world
    status, _, body = await call(app, "/nix-cache-info")
    assert status == 200 and body == b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 25\n"
    assert (await call(app, "/nope"))[0] == 404
    assert (await call(app, "/nix-cache-info", "POST"))[0] == 405
    status, headers, _ = await call(app, "/" + "5" * 32 + ".narinfo")
    assert status == 404 and "no claim for a path" in headers["x-ferry-reason"]


async def test_narinfo_is_signed_by_builders_and_node_and_nar_streams(world) -> None:
    app, backend, m, nar_bytes, node_key = world
    status, headers, body = await call(app, f"/{SP.hash_part}.narinfo")
    assert status == 200 and headers["content-type"] == "text/x-nix-narinfo"
    info = NarInfo.decode(body.decode())
    assert info.store_path == SP and info.nar_hash == m.nar_hash and info.nar_size == len(nar_bytes)
    sigs = {NixSignature.decode(s).key_name: NixSignature.decode(s) for s in info.sigs}
    assert set(sigs) == {"builder-a", "builder-b", "ferry-test-1"}
    assert sigs["ferry-test-1"].verify(info.fingerprint(), node_key.public)
    head = await call(app, f"/{SP.hash_part}.narinfo", "HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str(len(body))

    # A HEAD of the NAR says its size and fetches nothing (a probe must not cost a path).
    status, headers, got = await call(app, "/" + info.url, "HEAD")
    assert status == 200 and got == b"" and headers["content-length"] == str(len(nar_bytes))
    assert backend.completed == []
    status, headers, got = await call(app, "/" + info.url)
    assert status == 200 and got == nar_bytes and headers["content-length"] == str(len(nar_bytes))
    assert backend.completed == [SP]  # the chunks were made present before the status line
    status, headers, got = await call(app, "/" + info.url, headers=[(b"range", b"bytes=100-199")])
    assert status == 206 and got == nar_bytes[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(nar_bytes)}"
    status, _, got = await call(app, "/" + info.url + ".zst")
    assert (
        status == 200 and zstandard.ZstdDecompressor().decompressobj().decompress(got) == nar_bytes
    )
    metrics = (await call(app, "/metrics"))[2].decode()
    assert 'ferry_gateway_narinfo_total{reason="",result="hit"} 2.0' in metrics


async def test_refusals_say_why(world) -> None:
    app, *_ = world
    status, headers, _ = await call(app, "/" + "2" * 32 + ".narinfo")
    assert status == 404 and headers["x-ferry-reason"].startswith("insufficient: 1 of the 2")
    status, headers, _ = await call(app, "/" + "3" * 32 + ".narinfo")
    assert status == 404 and "no trust policy" in headers["x-ferry-reason"]
    status, headers, _ = await call(app, "/" + "4" * 32 + ".narinfo")
    assert status == 404 and "did not settle" in headers["x-ferry-reason"]
    metrics = (await call(app, "/metrics"))[2].decode()
    assert 'reason="insufficient",result="refused"} 1.0' in metrics
    assert 'reason="no-policy",result="refused"} 1.0' in metrics


async def test_a_nar_that_cannot_be_completed_is_503(world) -> None:
    app, backend, *_ = world
    info = NarInfo.decode((await call(app, f"/{SP.hash_part}.narinfo"))[2].decode())
    backend.chunks.chunks.clear()  # nothing here yet, and nobody will give it
    backend.fail_complete = FetchError("1 chunks are held by none of the 2 connected peers")
    status, headers, _body = await call(app, "/" + info.url)
    assert status == 503 and "held by none" in headers["x-ferry-reason"]
    assert (await call(app, "/nar/" + "0" * 52 + ".nar"))[0] == 404  # never asked for: unknown


def _in_nar_order(m: Manifest, chunks: export.MemoryChunks) -> list[tuple[bytes, bytes]]:
    return [(d, chunks.chunks[d]) for _, _, _, d in m.chunk_spans()]


async def test_a_nar_streams_while_its_chunks_still_arrive(world) -> None:
    app, backend, m, nar_bytes, _ = world
    info = NarInfo.decode((await call(app, f"/{SP.hash_part}.narinfo"))[2].decode())
    wanted = _in_nar_order(m, backend.chunks)
    assert len(wanted) >= 4
    backend.chunks.chunks.clear()
    half = len(wanted) // 2
    first_bytes, rest = trio.Event(), trio.Event()

    async def fetch(plan: Plan) -> None:
        backend.add(dict(wanted[:half]))
        await rest.wait()  # the rest stays on the "peer" until the client has bytes
        backend.add(dict(wanted[half:]))

    backend.fetch = fetch
    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)
        if msg.get("body"):
            first_bytes.set()

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    # Bounded: a gateway that waits for the whole path would wait here for ever.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = {"type": "http", "method": "GET", "path": "/" + info.url, "headers": []}
            nursery.start_soon(app, scope, receive, send)
            await first_bytes.wait()
            assert sent[0]["status"] == 200 and backend.completed == []  # fetch still running
            got_early = sum(len(x.get("body", b"")) for x in sent[1:])
            assert 0 < got_early < len(nar_bytes)
            rest.set()
    assert b"".join(x.get("body", b"") for x in sent[1:]) == nar_bytes
    assert sent[-1]["more_body"] is False and backend.completed == [SP]


async def test_a_chunk_lost_after_the_status_line_cuts_the_body_short(world) -> None:
    app, backend, m, nar_bytes, _ = world
    info = NarInfo.decode((await call(app, f"/{SP.hash_part}.narinfo"))[2].decode())
    wanted = _in_nar_order(m, backend.chunks)
    backend.chunks.chunks.clear()

    async def fetch(plan: Plan) -> None:
        backend.add(dict(wanted[: len(wanted) // 2]))
        await trio.lowlevel.checkpoint()  # the stream takes what there is first

    backend.fetch = fetch
    backend.fail_complete = FetchError("3 chunks are held by none of the 2 connected peers")
    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(NarUnavailable, match="held by none"):
        await app(
            {"type": "http", "method": "GET", "path": "/" + info.url, "headers": []},
            receive,
            send,
        )
    assert sent[0]["status"] == 200
    body = b"".join(x.get("body", b"") for x in sent[1:])
    assert 0 < len(body) < len(nar_bytes) and nar_bytes.startswith(body)
    assert all(x.get("more_body", True) for x in sent[1:])  # never finished


async def test_narinfos_for_one_path_ask_peers_once(world, autojump_clock) -> None:
    app, backend, *_ = world
    backend.planned = trio.Event()  # the first answer takes a while
    answers: list[int] = []

    async def ask(hash_part: str) -> None:
        answers.append((await call(app, f"/{hash_part}.narinfo"))[0])

    async with trio.open_nursery() as nursery:
        for _ in range(25):  # Nix's http-connections
            nursery.start_soon(ask, SP.hash_part)
            nursery.start_soon(ask, "5" * 32)  # a miss
        await trio.testing.wait_all_tasks_blocked()
        backend.planned.set()
    assert answers.count(200) == 25 and answers.count(404) == 25
    assert backend.asked.count(SP.hash_part) == 1 and backend.asked.count("5" * 32) == 1
    await call(app, f"/{SP.hash_part}.narinfo")
    assert backend.asked.count(SP.hash_part) == 1  # a hit is kept
    await trio.sleep(HIT_TTL + 1)
    await call(app, f"/{SP.hash_part}.narinfo")
    await call(app, "/" + "5" * 32 + ".narinfo")
    assert backend.asked.count(SP.hash_part) == 2  # for a while only
    assert backend.asked.count("5" * 32) == 2  # a miss never is: the path may appear


async def test_misses_and_recent_hits_are_answered_at_once(world, autojump_clock) -> None:
    app, backend, *_ = world
    miss = app.quick("GET", "/" + "5" * 32 + ".narinfo")
    assert miss is not None and miss[0] == 404 and backend.asked == []
    assert "no claim for a path" in dict(miss[1])[b"x-ferry-reason"].decode()
    # Not known at once: a path some peer may hold, one being planned, anything else.
    assert app.quick("GET", f"/{SP.hash_part}.narinfo") is None
    assert app.quick("POST", "/" + "5" * 32 + ".narinfo") is None
    assert app.quick("GET", "/nix-cache-info") is None
    _, _, body = await call(app, f"/{SP.hash_part}.narinfo")  # planned: now a hit
    hit = app.quick("GET", f"/{SP.hash_part}.narinfo")
    assert hit is not None and hit[0] == 200 and hit[2] == body
    assert app.quick("HEAD", f"/{SP.hash_part}.narinfo") == hit  # the server drops the body
    assert backend.asked == [SP.hash_part]
    metrics = (await call(app, "/metrics"))[2].decode()
    assert 'ferry_gateway_narinfo_total{reason="",result="hit"} 3.0' in metrics
    assert 'ferry_gateway_narinfo_total{reason="no-claims",result="miss"} 1.0' in metrics
    await trio.sleep(HIT_TTL + 1)
    assert app.quick("GET", f"/{SP.hash_part}.narinfo") is None  # asked again after a while
