"""Real nodes (`ferry node run` processes) on 127.0.0.1: quorum fetches over the
network, swarming, crashes on both ends."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import trio

from node.daemon import api, control
from tests.p2p.nodes import Swarm, keys, policy


def physical(closure, store_path: str) -> Path:
    return closure.store / store_path.lstrip("/")


@pytest.mark.slow
def test_five_nodes_quorum_closure_insufficient_and_conflict(
    swarm: Swarm, tmp_path: Path, nix, nix_closure
) -> None:
    k = keys(tmp_path, "builder-a", "builder-b", "builder-c")
    pol = policy(tmp_path, [k[n][1] for n in k], threshold=2)
    (boot,) = swarm.start("boot")
    b1, b2, b3 = swarm.start("b1", "b2", "b3", bootstrap=[boot.addr])
    # The client knows only the bootstrap node: claims reach it through boot (which kept
    # the builders' pushes), the builders themselves through the DHT.
    (client,) = swarm.start("client", bootstrap=[boot.addr], policy=pol)
    top, store = nix_closure.top, str(nix_closure.store)
    dep = next(p for p in nix_closure.paths if p != top)

    for p in nix_closure.paths:
        b1.json("publish", p, "--store", store, "--key", str(k["builder-a"][0]))
    r = client.ferry("fetch", top, "--closure")
    assert r.returncode == 3, r.stderr
    assert "insufficient: 1 of the 2" in r.stderr and "builder-b" in r.stderr

    for p in nix_closure.paths:
        b2.json("publish", p, "--store", store, "--key", str(k["builder-b"][0]))
    got = client.json("fetch", top, "--closure")
    assert {p["store_path"] for p in got["fetched"]} == {top, dep}
    assert all(sorted(p["signers"]) == ["builder-a", "builder-b"] for p in got["fetched"])
    assert set(got["per_peer"]) <= {b1.peer_id, b2.peer_id}  # no chunk from a node that has none

    # builder-c signs a different result for the same path: under `refuse`, nobody wins.
    lie = tmp_path / "lie"
    lie.mkdir()
    (lie / "x").write_text("not what top contains\n")
    b3.json(
        "publish",
        str(lie),
        "--store-path",
        top,
        "--references",
        dep,
        "--key",
        str(k["builder-c"][0]),
    )
    r = client.ferry("fetch", top)
    assert r.returncode == 3, r.stderr
    assert "conflict" in r.stderr and "builder-c" in r.stderr

    assert client.stop() == 0
    assert (
        not (client.data_dir / "node.addr").exists()
        and not (client.data_dir / "control.sock").exists()
    )
    for p in (top, dep):
        out = tmp_path / "out.nar"
        r = client.ferry("export", p, "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == nix.dump(physical(nix_closure, p))


def _tree(root: Path, size: int, seed: int) -> Path:
    root.mkdir()
    rnd = random.Random(seed)
    (root / "big").write_bytes(rnd.randbytes(size))
    (root / "small").write_bytes(rnd.randbytes(5000))
    return root


SP = "/nix/store/6bgvc3ilnkyjcnxz9xh2k0ym0wv9pwxl-swarm-1.0"


def _publish_everywhere(nodes, tree: Path, key: Path) -> None:
    for n in nodes:
        n.json("publish", str(tree), "--store-path", SP, "--key", str(key))


@pytest.mark.slow
def test_swarm_fetches_from_several_peers(swarm: Swarm, tmp_path: Path) -> None:
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    seeds = swarm.start("s1", "s2", "s3")
    (client,) = swarm.start("client", bootstrap=[s.addr for s in seeds], policy=pol)
    tree = _tree(tmp_path / "tree", 48 << 20, 1)
    _publish_everywhere(seeds, tree, k["builder-a"][0])
    got = client.json("fetch", SP)
    assert got["bytes_done"] == (48 << 20) + 5000
    served = {p: n for p, n in got["per_peer"].items() if n > 0}
    assert len(served) >= 2, got["per_peer"]
    peers = {p["peer_id"]: p for p in client.json("peers")}
    assert sum(peers[s.peer_id]["received_bytes"] for s in seeds) == got["bytes_done"]
    for s in seeds:  # a server counts what it sent: the manifest and endgame duplicates too
        assert s.json("status")["served_bytes"] >= got["per_peer"].get(s.peer_id, 0)


def _fetch_and_kill(client, when: float, victim) -> int:
    """Fetch through the control API; SIGKILL `victim` once `when` of the bytes are in.
    Returns the bytes the client had received by then (its last progress report)."""
    killed = False
    received = 0

    def progress(p: api.FetchProgress) -> None:
        nonlocal killed, received
        if not killed:
            received = p.bytes_done
        if not killed and p.bytes and p.bytes_done >= when * p.bytes:
            victim.kill(signal.SIGKILL)
            killed = True

    async def run() -> object:
        return await control.call(str(client.data_dir), api.FetchRequest(SP), progress)

    try:
        trio.run(run)
    except control.ControlError:
        if victim is not client:
            raise
    assert killed, "the fetch ended before the kill point"
    return received


def test_kill_serving_peer_mid_transfer(swarm: Swarm, tmp_path: Path) -> None:
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    s1, s2 = swarm.start("s1", "s2")
    (client,) = swarm.start("client", bootstrap=[s1.addr, s2.addr], policy=pol)
    tree = _tree(tmp_path / "tree", 96 << 20, 2)
    _publish_everywhere([s1, s2], tree, k["builder-a"][0])
    _fetch_and_kill(client, 0.2, s1)
    assert client.stop() == 0
    out = tmp_path / "out.nar"
    assert client.ferry("export", SP, "-o", str(out)).returncode == 0
    assert s2.stop() == 0
    assert s2.ferry("export", SP, "-o", str(tmp_path / "ref.nar")).returncode == 0
    assert out.read_bytes() == (tmp_path / "ref.nar").read_bytes()


def test_killed_client_resumes_without_refetching(swarm: Swarm, tmp_path: Path) -> None:
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    # The default settings: what arrives is committed every few MiB or 0.2 s by itself.
    (client,) = swarm.start("client", bootstrap=[seed.addr], policy=pol)
    tree = _tree(tmp_path / "tree", 96 << 20, 3)
    _publish_everywhere([seed], tree, k["builder-a"][0])
    total = json.loads(seed.ferry("status", "--json").stdout)["store"]["unique_chunks"]
    received = _fetch_and_kill(client, 0.5, client)
    client.start().wait_ready()
    got = client.json("fetch", SP)
    assert 0 < got["chunks"] < total - 1, got  # only what was missing was asked for
    # What had arrived before the kill was kept (committed every few MiB or 0.2 s).
    kept = (96 << 20) + 5000 - got["bytes"]
    print(f"received {received:,} before the kill, kept {kept:,}")
    assert kept >= 0.8 * received, (kept, received)
    assert client.stop() == 0
    assert client.ferry("verify").returncode == 0
