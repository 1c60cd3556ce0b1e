"""Differential transfer between real nodes: a client holding version 1 fetches version
2 as diffs against it, and ends with byte-identical chunks."""

from __future__ import annotations

import random
import re
import urllib.request
from pathlib import Path

from tests.p2p.nodes import NodeProc, Swarm, keys, policy

V1 = "/nix/store/" + "a" * 32 + "-tool-1.0"
V2 = "/nix/store/" + "b" * 32 + "-tool-1.1"


def _version(root: Path, v: int) -> Path:
    rnd = random.Random(42)
    binary = bytearray(rnd.randbytes(3 << 20))
    (root / "bin").mkdir(parents=True)
    (root / "share").mkdir()
    if v == 2:
        binary[100_000:100_000] = b"a new function" * 20  # an insertion shifts everything after it
        binary[2_500_000:2_500_016] = b"patched constant"
    (root / "bin" / "tool").write_bytes(bytes(binary))
    (root / "bin" / "tool").chmod(0o755)
    (root / "share" / f"tool-{v}.txt").write_bytes(rnd.randbytes(100_000) + b"version %d\n" % v)
    return root


def test_an_update_travels_as_diffs_and_arrives_intact(swarm: Swarm, tmp_path: Path) -> None:
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    (client,) = swarm.start("client", bootstrap=[seed.addr], policy=pol)
    for sp, v in ((V1, 1), (V2, 2)):
        seed.json(
            "publish",
            str(_version(tmp_path / f"v{v}", v)),
            "--store-path",
            sp,
            "--key",
            str(k["builder"][0]),
        )
    first = client.json("fetch", V1)
    assert first["diff_chunks"] == 0
    got = client.json("fetch", V2)
    assert got["diff_chunks"] > 0
    # The binary's chunks before the insertion were already here; nearly all the rest
    # came as diffs, a few KiB on the wire.
    assert got["diff_logical_bytes"] + got["deduplicated_bytes"] >= 3 << 20
    assert got["diff_received_bytes"] < 64 << 10
    assert got["received_bytes"] < got["bytes_done"] // 5
    r = client.ferry("fetch", V2)  # the summary says so too
    assert r.returncode == 0
    metrics = client.json("status")
    assert metrics["store"]["complete_paths"] == 2
    client.stop()
    seed.stop()
    for sp in (V1, V2):
        a = client.ferry("export", sp, "-o", str(tmp_path / "client.nar"))
        b = seed.ferry("export", sp, "-o", str(tmp_path / "seed.nar"))
        assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
        assert (tmp_path / "client.nar").read_bytes() == (tmp_path / "seed.nar").read_bytes()


def _diff_bytes(node: NodeProc) -> float:
    with urllib.request.urlopen(node.gateway_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return float(re.search(r"^ferry_diff_logical_bytes_total (\S+)$", text, re.M).group(1))


def test_every_fetch_session_honours_diffs_false(swarm: Swarm, tmp_path: Path) -> None:
    # A materialize mount fetches through its own session; `diffs = false` holds there too
    # (a node whose peers are short of CPU asks for plain chunks whatever fetches them).
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    for sp, v in ((V1, 1), (V2, 2)):
        seed.json(
            "publish",
            str(_version(tmp_path / f"v{v}", v)),
            "--store-path",
            sp,
            "--key",
            str(k["builder"][0]),
        )
    (plain,) = swarm.start("plain", bootstrap=[seed.addr], policy=pol, config="diffs = false\n")
    (diffing,) = swarm.start("diffing", bootstrap=[seed.addr], policy=pol)
    for client in (plain, diffing):
        client.json("fetch", V1)
        got = client.json(
            "mount", V2, str(tmp_path / f"{client.name}-v2"), "--backend", "materialize"
        )
        assert got["backend"] == "materialize"
        assert (
            (tmp_path / f"{client.name}-v2" / "share" / "tool-2.txt")
            .read_bytes()
            .endswith(b"version 2\n")
        )
    assert _diff_bytes(diffing) > 0  # the same mount on a default node does use diffs
    assert _diff_bytes(plain) == 0
