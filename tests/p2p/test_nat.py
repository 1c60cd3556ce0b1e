"""Nodes behind NAT (root): a public node and two home nodes, each behind its own
masquerading router, in network namespaces the test makes (tests/p2p/natnet.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Nix, require
from tests.p2p.natnet import PUBLIC_ADDR, NatNet
from tests.p2p.nodes import NodeProc, Swarm, keys, policy

SP = "/nix/store/" + "4" * 32 + "-at-home-1.0"
SP_NIX = "/nix/store/" + "5" * 32 + "-for-nix-1.0"


def _needs() -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("nft") is not None, "nft is not installed (nftables)")


@pytest.fixture
def natnet():  # type: ignore[no-untyped-def]
    _needs()
    with NatNet(homes=2) as net:
        yield net


def _tree(root: Path, size: int = 300_000) -> Path:
    (root / "share").mkdir(parents=True)
    (root / "share" / "data").write_bytes(os.urandom(size))
    return root


@pytest.mark.kernel
def test_home_nodes_reach_the_public_node_through_their_routers_and_learn_they_are_private(
    natnet: NatNet, swarm: Swarm
) -> None:
    # This public node does not relay: nothing reaches the home nodes.
    public, *homes = _start(natnet, swarm, public_config='relay = "off"\n')
    a, b = natnet.home
    # The public node sees each home node at its router's public address (masquerade).
    seen = {row["peer_id"]: row for row in public.json("peers")}
    for node, h in zip(homes, (a, b)):
        row = seen[node.peer_id]
        assert row["connected"], row
        assert re.search(r"counter packets [1-9]\d* bytes \d+ masquerade", h.nft_counters())
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
        assert check["level"] == "warn" and "no relay holds a slot" in check["detail"]
        assert "keep a public node that relays" in check["fix"]
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


def _start(
    natnet: NatNet, swarm: Swarm, pol: Path | None = None, public_config: str = ""
) -> tuple[NodeProc, NodeProc, NodeProc]:
    """The public node, and a home node in each home (the second with `pol`), each
    bootstrapped from the public one."""
    (public,) = swarm.start(
        "public", netns=natnet.public, listen=f"/ip4/{PUBLIC_ADDR}/tcp/4001", config=public_config
    )
    a, b = natnet.home
    home_a, home_b = (
        swarm.start(
            f"home{h.index}",
            netns=h.ns,
            listen=f"/ip4/{h.addr}/tcp/4001",
            bootstrap=[public.addr],
            **({"policy": pol} if h is b and pol else {}),
        )[0]
        for h in (a, b)
    )
    return public, home_a, home_b


def _homes(
    natnet: NatNet, swarm: Swarm, pol: Path, relay_config: str = ""
) -> tuple[NodeProc, NodeProc, NodeProc]:
    """`_start`'s nodes, once both home nodes learned they are private and hold a slot
    on the public node, which relays."""
    public, home_a, home_b = _start(natnet, swarm, pol, relay_config)
    for node in (home_a, home_b):
        node.wait_log("relay: reserved a slot on " + public.peer_id)
        st = node.json("status")
        assert st["reachability"] == "private"
        assert st["relays"]["slots"] == [f"{public.addr}/p2p-circuit"]
        r = node.ferry("doctor", "--json")
        (check,) = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "reachability"]
        assert check["level"] == "ok" and "peers reach it through 1 relay" in check["detail"]
    assert public.json("status")["relay"]["reservations"] == 2
    return public, home_a, home_b


def _publish(node: NodeProc, tree: Path, sp: str, key: Path) -> None:
    node.json("publish", str(tree), "--store-path", sp, "--key", str(key))
    node.wait_log(f"DHT: provider record for {sp} written")


def _realise(
    nix: Nix, dest: Path, client: NodeProc, ns: str, path: str
) -> subprocess.CompletedProcess[str]:
    """Unmodified Nix substitutes `path` from the client's gateway, in its namespace."""
    key = (client.data_dir / "cache.pub").read_text().strip()
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nix-store", "--store", str(dest), "--realise", path]
        + ["--option", "substituters", client.gateway_url]
        + ["--option", "trusted-public-keys", key, "--option", "download-attempts", "1"],
        capture_output=True,
        text=True,
        env=nix.env,
        timeout=300,
    )


@pytest.mark.kernel
def test_two_home_nodes_punch_a_hole_and_fetch_directly(
    natnet: NatNet, swarm: Swarm, nix: Nix, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    public, home_a, home_b = _homes(natnet, swarm, pol)
    b = natnet.home[1]
    size, nix_size = 4_000_000, 1_000_000
    _publish(home_a, _tree(tmp_path / "tree", size), SP, k["builder"][0])
    _publish(home_a, _tree(tmp_path / "nix-tree", nix_size), SP_NIX, k["builder"][0])
    r = home_b.ferry("fetch", SP)
    assert r.returncode == 0, r.stderr + "\n".join(home_b.log)
    assert "relayed" not in r.stdout, r.stdout
    home_b.wait_log(f"connected to {home_a.peer_id} directly: the hole punch went through")
    home_a.wait_log(f"{home_b.peer_id} connected directly: the hole punch went through")
    # Unmodified Nix, through home B's gateway: over the same punched connection.
    r = _realise(nix, tmp_path / "nix-b", home_b, b.ns, SP_NIX)
    assert r.returncode == 0, r.stderr
    got = tmp_path / "nix-b" / SP_NIX[1:] / "share" / "data"
    assert got.read_bytes() == (tmp_path / "nix-tree" / "share" / "data").read_bytes()
    # The relay carried the punch's few messages only, and one circuit; the bytes came
    # into home B from home A's router, not from the relay.
    moved = size + nix_size
    relay = public.json("status")["relay"]
    assert relay["circuits_total"] == 1 and relay["circuits"] == 0, relay
    assert relay["bytes_relayed"] <= moved // 100, relay
    inbound = b.inbound_bytes()
    assert inbound["from-elsewhere"] >= moved, inbound
    assert inbound["from-public"] < moved // 10, inbound
    mine = home_b.json("status")["relays"]
    assert (mine["punched"], mine["punch_failed"], mine["relayed_peers"]) == (1, 0, [])
    # Home B learned home A's relayed address from the DHT (and identify).
    (row,) = [p for p in home_b.json("peers") if p["peer_id"] == home_a.peer_id]
    assert any(a.startswith(f"{public.addr}/p2p-circuit") for a in row["addrs"]), row
    assert "punch    1 direct through a hole punch" in home_b.ferry("status").stdout


@pytest.mark.kernel
def test_behind_a_symmetric_nat_the_fetch_goes_through_the_relay_and_says_so(
    swarm: Swarm, tmp_path: Path
) -> None:
    _needs()
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    # Router 2 maps each connection to a new random port: no punch gets through it.
    with NatNet(homes=2, symmetric=frozenset({2})) as natnet:
        public, home_a, home_b = _homes(natnet, swarm, pol)
        size = 1_000_000
        _publish(home_a, _tree(tmp_path / "tree", size), SP, k["builder"][0])
        r = home_b.ferry("fetch", SP)
        assert r.returncode == 0, r.stderr + "\n".join(home_b.log)
        assert (
            f"relayed: chunks from {home_a.peer_id} came through relay {public.peer_id}" in r.stdout
        ), r.stdout
        home_b.wait_log(f"connected to {home_a.peer_id} through relay {public.peer_id}")
        relay = public.json("status")["relay"]
        assert relay["circuits"] == 1 and size <= relay["bytes_relayed"] <= 2 * size, relay
        mine = home_b.json("status")["relays"]
        assert (mine["punched"], mine["punch_failed"]) == (0, 1)
        assert mine["relayed_peers"] == [home_a.peer_id]
        assert natnet.home[1].inbound_bytes()["from-elsewhere"] == 0
        (received,) = [p for p in home_b.json("peers") if p["peer_id"] == home_a.peer_id]
        assert received["received_bytes"] >= size


@pytest.mark.kernel
def test_a_relayed_fetch_is_held_to_the_relays_byte_limit(swarm: Swarm, tmp_path: Path) -> None:
    """Each circuit through the relay carries at most 6 MiB: the fetch of 16 MB takes
    several, one after another, each ended by the relay at its limit. (A reply frame
    is up to 4 MiB: a limit much below that would let no chunk through.)"""
    _needs()
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    with NatNet(homes=2, symmetric=frozenset({2})) as natnet:
        public, home_a, home_b = _homes(
            natnet, swarm, pol, relay_config='[limits]\nrelay_circuit_bytes = "6M"\n'
        )
        size = 16_000_000
        _publish(home_a, _tree(tmp_path / "tree", size), SP, k["builder"][0])
        r = home_b.ferry("fetch", SP)
        assert r.returncode == 0, r.stderr + "\n".join(home_b.log)
        assert f"came through relay {public.peer_id}" in r.stdout, r.stdout
        public.wait_log("reached its 6,291,456-byte limit")
        relay = public.json("status")["relay"]
        assert relay["ended_by_limit"] >= 2, relay
        assert relay["bytes_relayed"] <= 6_291_456 * relay["circuits_total"], relay
        home_b.wait_log(f"the connection to {home_a.peer_id} through relay {public.peer_id} closed")
