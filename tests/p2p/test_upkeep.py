"""Upkeep without downtime: every store command through a running node, and eviction
under `max_store_size` while a fetch and a gateway download are under way."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from store.narinfo import NarInfo
from tests.cli import ferry
from tests.p2p.nodes import NodeProc, Swarm, keys, policy
from tests.p2p.throttle import SlowLink

pytestmark = pytest.mark.slow(seconds=40)

MB = 1 << 20


def store_path(n: int, name: str) -> str:
    return f"/nix/store/{'0' * 31}{n}-{name}"


def tree(root: Path, name: str, size: int) -> Path:
    d = root / name
    d.mkdir()
    (d / "data").write_bytes(os.urandom(size))  # incompressible: bytes on disk are `size`
    (d / "name").write_text(name)
    return d


def nar_url(client: NodeProc, sp: str) -> str:
    """The NAR's URL, from the narinfo Nix would ask first (the client learns the
    path's claims there)."""
    base = client.gateway_url
    hash_part = sp.rsplit("/", 1)[1].split("-", 1)[0]
    with urllib.request.urlopen(f"{base}/{hash_part}.narinfo", timeout=60) as r:
        info = NarInfo.decode(r.read().decode())
    return f"{base}/{info.url}"


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def gateway_nar(client: NodeProc, sp: str) -> bytes:
    return download(nar_url(client, sp))


def stats(node: NodeProc) -> dict:
    return node.json("store", "stats")


def test_eviction_under_the_cap_runs_beside_a_fetch_and_a_gateway_download(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    quick, slow = swarm.start("quick", "slow")
    trees = {}
    for i, (node, name) in enumerate(
        [(quick, "cache-1"), (quick, "cache-2"), (quick, "cache-3"), (slow, "f"), (slow, "g")]
    ):
        sp = store_path(i, name)
        trees[name] = (sp, tree(tmp_path, name, 3 * MB))
        node.json("publish", str(trees[name][1]), "--store-path", sp, "--key", str(k["builder"][0]))
    # The slow builder is behind a 400 KB/s link: F and G take seconds to come.
    host, port = slow.addr.split("/")[2], int(slow.addr.split("/")[4])
    link = SlowLink((host, port), 400_000)
    client = NodeProc(
        swarm.root,
        "client",
        bootstrap=[quick.addr, link.multiaddr(slow.peer_id)],
        policy=pol,
        timeout=30,
        config='max_store_size = "8M"\nmdns = false\ndht = false\n',
    )
    swarm.nodes.append(client)
    try:
        client.start().wait_ready()
        nars = {}
        for name in ("cache-1", "cache-2"):
            nars[name] = gateway_nar(client, trees[name][0])
        assert stats(client)["unique_bytes"] < 8 * MB

        results: dict[str, object] = {}
        f_sp, g_sp = trees["f"][0], trees["g"][0]
        g_url = nar_url(client, g_sp)
        threads = [
            threading.Thread(
                target=lambda: results.update(f=client.ferry("fetch", f_sp, "--json")),
                daemon=True,
            ),
            threading.Thread(
                target=lambda: results.update(g=download(g_url), g_done=time.monotonic()),
                daemon=True,
            ),
        ]
        for t in threads:
            t.start()
        # Both under way (recorded, chunks missing): polled, a bounded number of times.
        for _ in range(100):
            listed = {p["store_path"]: p for p in client.json("store", "list")}
            if f_sp in listed and g_sp in listed:
                break
        else:
            raise AssertionError(
                "the client never started fetching F and G:\n" + "\n".join(client.log)
            )
        # A third cached path takes the store over the cap: eviction runs now, beside the
        # fetch and the download, and drops the least recently used cache.
        nars["cache-3"] = gateway_nar(client, trees["cache-3"][0])
        cache3_done = time.monotonic()
        client.wait_log("evicted")
        listed = {p["store_path"]: p for p in client.json("store", "list")}
        assert trees["cache-1"][0] not in listed
        assert {f_sp, g_sp, trees["cache-3"][0]} <= set(listed)
        in_progress = listed[f_sp]["missing_chunks"] or listed[g_sp]["missing_chunks"]
        assert in_progress, "F and G were complete before eviction ran: the link is too fast"
        for t in threads:
            t.join(120)
            assert not t.is_alive()
    finally:
        link.close()
    fetched = results["f"]
    assert isinstance(fetched, subprocess.CompletedProcess) and fetched.returncode == 0, fetched
    assert [p["store_path"] for p in json.loads(fetched.stdout)["fetched"]] == [f_sp]
    expected = subprocess.run(
        ["nix-store", "--dump", str(trees["g"][1])], capture_output=True, check=True
    ).stdout
    assert results["g"] == expected
    # The chunks that came in set eviction off again: the store ends under the cap, with
    # the fetched path (a root) and the one Nix used last.
    for _ in range(10):  # each turn waits for the node's next eviction
        if (size := stats(client)["unique_bytes"]) <= 8 * MB:
            break
        client.wait_log("evicted", count=len([x for x in client.log if "evicted" in x]) + 1)
    assert size <= 8 * MB
    listed = {p["store_path"]: p for p in client.json("store", "list")}
    assert f_sp in listed and listed[f_sp]["root"] and not listed[f_sp]["missing_chunks"]
    # Nix's last use of a path ends when its download does: G's may end before or after
    # cache-3's, whichever the link makes it.
    g_done = results["g_done"]
    assert isinstance(g_done, float)
    last = g_sp if g_done > cache3_done else trees["cache-3"][0]
    assert last in listed and not listed[last]["missing_chunks"]


def test_every_store_command_works_through_a_running_node(swarm: Swarm, tmp_path: Path) -> None:
    (node,) = swarm.start("node")
    kept, dropped = store_path(1, "kept"), store_path(2, "dropped")
    node.json("publish", str(tree(tmp_path, "kept", 100_000)), "--store-path", kept)
    node.json(
        "publish", str(tree(tmp_path, "dropped", 100_000)), "--store-path", dropped, "--no-root"
    )
    assert stats(node)["paths"] == 2
    assert {p["store_path"]: p["root"] for p in node.json("store", "list")} == {
        kept: True,
        dropped: False,
    }
    r = node.ferry("root", "list")
    assert r.returncode == 0 and r.stdout.split() == [kept]
    r = node.ferry("root", "remove", dropped)
    assert r.returncode == 1 and f"{dropped} is not a GC root" in r.stderr
    absent = store_path(9, "absent")
    r = node.ferry("root", "add", absent)
    assert r.returncode == 1 and f"{absent} is not in this ferry store" in r.stderr
    assert node.json("gc", "--dry-run")["removed_paths"] == [dropped]
    assert node.json("gc")["removed_paths"] == [dropped]
    assert node.json("verify")["ok"] is True
    out = tmp_path / "kept.nar"
    r = node.ferry("export", kept, "-o", str(out))
    assert r.returncode == 0, r.stderr
    expected = subprocess.run(
        ["nix-store", "--dump", str(tmp_path / "kept")], capture_output=True, check=True
    ).stdout
    assert out.read_bytes() == expected
    r = node.ferry("export", dropped, "-o", str(tmp_path / "gone.nar"))
    assert r.returncode == 1 and "is not in this ferry store" in r.stderr
    assert not (tmp_path / "gone.nar").exists()
    img = node.json("image", kept, "-o", str(tmp_path / "kept.img"))
    assert img["inodes"] >= 3 and (tmp_path / "kept.img").stat().st_size == img["bytes"]
    assert str(node.data_dir / "slabs") in img["mount_options"]
    r = node.ferry("materialize", kept, str(tmp_path / "tree"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tree" / "name").read_text() == "kept"
    r = node.ferry("materialize", kept, str(tmp_path / "tree"))
    assert r.returncode == 1 and "tree" in r.stderr
    r = node.ferry("root", "remove", kept)
    assert r.returncode == 0, r.stderr
    assert node.json("gc")["removed_paths"] == [kept]
    # Nothing said "in use": the node served every command.
    assert not any("in use by" in line for line in node.log)
    assert ferry("store", "stats", "--data-dir", str(node.data_dir)).returncode == 0
