"""Nodes behind NAT (root): a public node and two home nodes, each behind its own
masquerading router, in network namespaces the test makes (tests/p2p/natnet.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.p2p.natnet import PUBLIC_ADDR, NatNet
from tests.p2p.nodes import Swarm, keys, policy

SP = "/nix/store/" + "4" * 32 + "-at-home-1.0"


def _needs() -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("nft") is not None, "nft is not installed (nftables)")


@pytest.fixture
def natnet():  # type: ignore[no-untyped-def]
    _needs()
    with NatNet(homes=2) as net:
        yield net


def _tree(root: Path) -> Path:
    (root / "share").mkdir(parents=True)
    (root / "share" / "data").write_bytes(os.urandom(300_000))
    return root


@pytest.mark.kernel
def test_home_nodes_reach_the_public_node_through_their_routers_and_learn_they_are_private(
    natnet: NatNet, swarm: Swarm
) -> None:
    (public,) = swarm.start("public", netns=natnet.public, listen=f"/ip4/{PUBLIC_ADDR}/tcp/4001")
    a, b = natnet.home
    homes = [
        swarm.start(
            f"home{h.index}",
            netns=h.ns,
            listen=f"/ip4/{h.addr}/tcp/4001",
            bootstrap=[public.addr],
        )[0]
        for h in (a, b)
    ]
    # The public node sees each home node at its router's public address (masquerade).
    seen = {row["peer_id"]: row for row in public.json("peers")}
    for node, h in zip(homes, (a, b)):
        row = seen[node.peer_id]
        assert row["connected"], row
        assert "counter packets 0 " not in h.nft_counters()
    # Each learns from its peers' dial-backs whether it can be dialed: the public node can,
    # at its address; the home nodes cannot (their routers map no port inwards).
    public.wait_log(f"reachability: public at /ip4/{PUBLIC_ADDR}/tcp/4001")
    for node in homes:
        node.wait_log("reachability: private")
        st = node.json("status")
        assert st["reachability"] == "private" and st["public_addr"] is None
        assert "private: peers cannot dial it" in node.ferry("status").stdout
        r = node.ferry("doctor", "--json")
        (check,) = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "reachability"]
        assert check["level"] == "warn" and "forward the node's TCP port" in check["fix"]
    st = public.json("status")
    assert (st["reachability"], st["public_addr"]) == ("public", f"/ip4/{PUBLIC_ADDR}/tcp/4001")
    checks = json.loads(public.ferry("doctor", "--json").stdout)["checks"]
    assert {"name": "reachability", "level": "ok", "fix": ""}.items() <= next(
        c for c in checks if c["name"] == "reachability"
    ).items()
    # A home node cannot reach the other's private address: no route between homes.
    r = subprocess.run(
        ["ip", "netns", "exec", a.ns, "ip", "route", "get", b.addr],
        capture_output=True,
        text=True,
    )
    assert "via 10.1.0.1" in r.stdout  # only towards its own router, which has no route on
    r = subprocess.run(
        ["ip", "netns", "exec", a.router, "ip", "route", "get", b.addr],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "unreachable" in r.stderr


@pytest.mark.kernel
@pytest.mark.xfail(
    reason="issue 26: no relay or hole punching yet; home nodes cannot dial each other",
    strict=True,
)
def test_a_home_node_fetches_from_another_home_node(
    natnet: NatNet, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (public,) = swarm.start("public", netns=natnet.public, listen=f"/ip4/{PUBLIC_ADDR}/tcp/4001")
    a, b = natnet.home
    (home_a,) = swarm.start(
        "home1", netns=a.ns, listen=f"/ip4/{a.addr}/tcp/4001", bootstrap=[public.addr]
    )
    (home_b,) = swarm.start(
        "home2",
        netns=b.ns,
        listen=f"/ip4/{b.addr}/tcp/4001",
        bootstrap=[public.addr],
        policy=pol,
    )
    home_a.json(
        "publish", str(_tree(tmp_path / "tree")), "--store-path", SP, "--key", str(k["builder"][0])
    )
    r = home_b.ferry("fetch", SP)
    assert r.returncode == 0, r.stderr
