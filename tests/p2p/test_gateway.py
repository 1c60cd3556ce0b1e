"""The Nix gateway with the real Nix 2.8 as its client: builders publish a Nix-built
closure, a client node with an empty store serves it to `nix-store --realise` through
its binary-cache endpoint, fetching every byte from the builders over libp2p."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import psutil
import pytest

from store import build
from store.narinfo import NarInfo
from store.path import StorePath
from tests.cli import ARGV, ferry
from tests.conftest import NIX_MK, Nix, require
from tests.p2p.nodes import NodeProc, Swarm, keys, policy, rot_chunk
from trust.key import PublicKey
from trust.signature import NixSignature

GATEWAY_NIX = (
    """
let"""
    + NIX_MK
    + """
  lib = mk "gw-lib-1.0" "mkdir $out; seq 1 300000 > $out/data; echo lib > $out/name";
  mid = mk "gw-mid-1.0" "mkdir $out; echo ${lib} > $out/lib-ref; seq 5 5 900000 > $out/table";
  top = mk "gw-top-1.0" ''
    mkdir -p $out/bin; echo ${mid} > $out/mid-ref; printf '#!/bin/sh\\ncat ${lib}/name\\n' > $out/bin/run
    chmod +x $out/bin/run; ln -s bin/run $out/link
  '';
  lonely = mk "gw-lonely-1.0" "echo alone > $out";
  broken = mk "gw-broken-1.0" "mkdir $out; seq 1 400000 > $out/big";
in { inherit top lonely broken; }
"""
)


class Built:
    def __init__(self, nix: Nix, root: Path) -> None:
        self.store = root / "store"
        (root / "gateway.nix").write_text(GATEWAY_NIX)
        self.out = {}
        for attr in ("top", "lonely", "broken"):
            self.out[attr] = (
                nix.run(
                    "nix-build",
                    "--store",
                    str(self.store),
                    str(root / "gateway.nix"),
                    "-A",
                    attr,
                    "--no-out-link",
                )
                .decode()
                .strip()
            )
        self.closure = sorted(
            nix.run("nix-store", "--store", str(self.store), "-qR", self.out["top"])
            .decode()
            .split()
        )


@pytest.fixture(scope="module")
def built(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(nix, tmp_path_factory.mktemp("gateway-build"))


@pytest.fixture
def network(swarm: Swarm, tmp_path: Path):
    """Three builders (two of which publish what they are given), and a client with an
    empty store and a 2-of-3 policy."""
    k = keys(tmp_path, "builder-a", "builder-b", "builder-c")
    pol = policy(tmp_path, [k[n][1] for n in k], threshold=2)
    builders = swarm.start("b1", "b2", "b3")
    (client,) = swarm.start("client", bootstrap=[b.addr for b in builders], policy=pol)
    return builders, [k[n][0] for n in k], client


def _publish(node: NodeProc, built: Built, paths: list[str], key: Path) -> None:
    for p in paths:
        node.json("publish", p, "--store", str(built.store), "--key", str(key))


def _realise(nix: Nix, dest: Path, path: str, client: NodeProc) -> subprocess.CompletedProcess[str]:
    key = (client.data_dir / "cache.pub").read_text().strip()
    return subprocess.run(
        [
            "nix-store",
            "--store",
            str(dest),
            "--realise",
            path,
            "--option",
            "substituters",
            client.gateway_url,
            "--option",
            "trusted-public-keys",
            key,
            "--option",
            "narinfo-cache-negative-ttl",
            "0",
            # Nix retries a failed download after a growing pause (about 15 s in all for
            # 5 attempts): once shows the same error.
            "--option",
            "download-attempts",
            "1",
        ],
        capture_output=True,
        text=True,
        env=nix.env,
        timeout=300,
    )


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _hash(path: str) -> str:
    return Path(path).name.split("-", 1)[0]


def test_nix_substitutes_a_closure_through_the_gateway(
    nix: Nix, built: Built, network, tmp_path: Path
) -> None:
    (b1, b2, _), (ka, kb, _), client = network
    assert len(built.closure) >= 3
    _publish(b1, built, built.closure, ka)
    _publish(b2, built, built.closure, kb)
    assert client.json("status")["store"]["paths"] == 0  # the gateway's node has nothing yet

    status, headers, body = _get(client.gateway_url + "/nix-cache-info")
    assert status == 200 and b"WantMassQuery: 1" in body and b"Priority: 30" in body
    assert b"StoreDir: /nix/store" in body

    dest = tmp_path / "dest"
    r = _realise(nix, dest, built.out["top"], client)
    assert r.returncode == 0, r.stderr + "\n".join(client.log[-30:])
    for p in built.closure:
        nix.run("nix-store", "--store", str(dest), "--verify-path", p)
        assert nix.dump(dest / p.lstrip("/")) == nix.dump(built.store / p.lstrip("/"))

    # Every byte came over libp2p from the two builders that published.
    peers = {p["peer_id"]: p for p in client.json("peers")}
    assert peers[b1.peer_id]["received_bytes"] + peers[b2.peer_id]["received_bytes"] > 2_000_000
    assert client.json("status")["store"]["complete_paths"] == len(built.closure)

    # The narinfo carries both builders' signatures and the node's own, which verifies.
    status, headers, body = _get(f"{client.gateway_url}/{_hash(built.out['top'])}.narinfo")
    assert status == 200
    info = NarInfo.decode(body.decode())
    assert info.file_size == info.nar_size  # Nix announces the download's size
    names = {s.split(":", 1)[0] for s in info.sigs}
    assert {"builder-a", "builder-b"} <= names
    node_key = PublicKey.decode((client.data_dir / "cache.pub").read_text().strip())
    assert any(NixSignature.decode(s).verify(info.fingerprint(), node_key) for s in info.sigs)
    status, headers, body = _get(
        f"{client.gateway_url}/{_hash(built.out['top'])}.narinfo", method="HEAD"
    )
    assert status == 200 and body == b""

    # A Range request gets exactly those bytes of the NAR.
    nar = nix.dump(built.store / built.out["top"].lstrip("/"))
    lib = next(p for p in built.closure if "gw-lib" in p)
    lib_nar = nix.dump(built.store / lib.lstrip("/"))
    status, _, body = _get(f"{client.gateway_url}/{_hash(lib)}.narinfo")
    url = client.gateway_url + "/" + NarInfo.decode(body.decode()).url
    a, b = len(lib_nar) // 3, len(lib_nar) // 3 + 200_000
    status, headers, body = _get(url, {"Range": f"bytes={a}-{b}"})
    assert status == 206, headers
    assert body == lib_nar[a : b + 1]
    assert headers["content-range"] == f"bytes {a}-{b}/{len(lib_nar)}"
    status, headers, _ = _get(url, {"Range": f"bytes={len(lib_nar)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(lib_nar)}"
    status, _, body = _get(url)
    assert status == 200 and body == lib_nar
    assert nar  # the top NAR went through Nix above

    metrics = _get(client.gateway_url + "/metrics")[2].decode()
    assert 'ferry_gateway_narinfo_total{reason="",result="hit"}' in metrics
    served = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("ferry_gateway_served_bytes_total ")
    )
    assert served >= sum(len(nix.dump(built.store / p.lstrip("/"))) for p in built.closure)
    fetched = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("ferry_fetched_bytes_total ")
    )
    assert fetched > 2_000_000
    # The gateway worked ahead of Nix: mid was planned with top's answer, lib with mid's;
    # top (small) was fetched with its narinfo's.
    assert _metric(metrics, 'ferry_gateway_ahead_paths_total{work="planned"}') >= 2, "\n".join(
        client.log
    )
    assert _metric(metrics, 'ferry_gateway_ahead_paths_total{work="filled"}') >= 1


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_small_path_is_fetched_with_its_narinfo(
    nix: Nix, built: Built, network, tmp_path: Path
) -> None:
    (b1, b2, _), (ka, kb, _), client = network
    lonely = built.out["lonely"]
    _publish(b1, built, [lonely], ka)
    _publish(b2, built, [lonely], kb)
    status, _, body = _get(f"{client.gateway_url}/{_hash(lonely)}.narinfo")
    assert status == 200
    # No NAR asked for: Nix asks a narinfo when it means to download; a small path comes
    # with it. The state is in another process: polled, a bounded number of times.
    for _ in range(200):
        if client.json("status")["store"]["complete_paths"] == 1:
            break
    else:
        raise AssertionError("the small path was not fetched ahead")
    metrics = _get(client.gateway_url + "/metrics")[2].decode()
    assert _metric(metrics, 'ferry_gateway_ahead_paths_total{work="filled"}') == 1
    url = f"{client.gateway_url}/{NarInfo.decode(body.decode()).url}"
    assert _get(url) == (200, ANY, nix.dump(built.store / lonely.lstrip("/")))


def test_misses_are_answered_from_memory_while_a_peer_hangs(
    built: Built, network, tmp_path: Path
) -> None:
    (b1, b2, b3), (ka, _, kc), client = network
    lonely = built.out["lonely"]
    _publish(b1, built, [lonely], ka)
    _publish(b3, built, [lonely], kc)
    assert b2.proc is not None
    b2.proc.send_signal(signal.SIGSTOP)  # connected, and never answers again
    try:
        rnd = random.Random(21)
        for _ in range(20):
            missing = "".join(rnd.choice("0123456789abcdfghijklmnpqrsvwxyz") for _ in range(32))
            status, headers, _ = _get(f"{client.gateway_url}/{missing}.narinfo")
            assert status == 404
            # Decided from what the node and its peers listed, not by asking them.
            assert "neither this node nor its 3 connected peers" in headers["x-ferry-reason"]
        status, _, body = _get(f"{client.gateway_url}/{_hash(lonely)}.narinfo")
        assert status == 200, body
        assert {"builder-a", "builder-c"} <= {
            s.split(":", 1)[0] for s in NarInfo.decode(body.decode()).sigs
        }
    finally:
        b2.proc.send_signal(signal.SIGCONT)


def test_one_claim_is_not_enough_for_nix(nix: Nix, built: Built, network, tmp_path: Path) -> None:
    (b1, _, _), (ka, _, _), client = network
    _publish(b1, built, [built.out["lonely"]], ka)
    status, headers, _ = _get(f"{client.gateway_url}/{_hash(built.out['lonely'])}.narinfo")
    assert status == 404
    assert "insufficient: 1 of the 2" in headers["x-ferry-reason"]
    r = _realise(nix, tmp_path / "dest", built.out["lonely"], client)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "hash mismatch" not in r.stderr
    assert not (tmp_path / "dest" / built.out["lonely"].lstrip("/")).exists()
    assert any("refused" in line and "insufficient" in line for line in client.log)
    metrics = _get(client.gateway_url + "/metrics")[2].decode()
    assert 'ferry_gateway_narinfo_total{reason="insufficient",result="refused"}' in metrics


@pytest.mark.slow
def _nar(nix: Nix, built: Built, path: str) -> bytes:
    """The NAR of a built path, as Nix makes it (from the chroot store's files)."""
    return nix.run("nix-store", "--dump", str(built.store) + path)


def _chunks_in_nar_order(nix: Nix, built: Built, path: str) -> list[bytes]:
    m = build.from_nar([_nar(nix, built, path)], StorePath.parse(path))
    return [d for _, _, _, d in m.chunk_spans()]


def _broken(nix: Nix, built: Built, network, which: int) -> tuple[NodeProc, str, list[bytes]]:
    """Two builders publish the broken path, and both lose its chunk number `which` (in
    NAR order): nobody can give it. The client, the path, its chunks."""
    (b1, b2, _), (ka, kb, _), client = network
    path = built.out["broken"]
    _publish(b1, built, [path], ka)
    _publish(b2, built, [path], kb)
    chunks = _chunks_in_nar_order(nix, built, path)
    for b in (b1, b2):
        rot_chunk(b, chunks[which])
    return client, path, chunks


def test_a_chunk_nobody_has_is_a_503_not_a_bad_nar(
    nix: Nix, built: Built, network, tmp_path: Path
) -> None:
    client, path, _ = _broken(nix, built, network, 0)  # known before a byte could go out
    r = _realise(nix, tmp_path / "dest", path, client)
    assert r.returncode != 0
    assert "503" in r.stderr, r.stderr + "\n".join(client.log[-60:])
    assert "hash mismatch" not in r.stderr
    assert any("unavailable" in line for line in client.log)
    assert client.json("status")["store"]["complete_paths"] == 0
    r = client.ferry("fetch", path)  # the CLI says the same, plainly
    assert r.returncode == 1 and "held by none of the 3 connected peers" in r.stderr


def test_a_nar_streams_before_its_fetch_ends_and_a_chunk_lost_midway_fails_nix(
    nix: Nix, built: Built, network, tmp_path: Path
) -> None:
    client, path, chunks = _broken(nix, built, network, -1)  # the fetch can never end
    assert len(chunks) >= 4
    status, _, body = _get(f"{client.gateway_url}/{_hash(path)}.narinfo")
    assert status == 200, body
    info = NarInfo.decode(body.decode())
    with urllib.request.urlopen(f"{client.gateway_url}/{info.url}", timeout=60) as r:
        assert r.status == 200 and int(r.headers["content-length"]) == info.nar_size
        first = r.read(1 << 20)  # bytes while the fetch is still going (it cannot end)
        assert len(first) == 1 << 20
        assert client.json("status")["store"]["complete_paths"] == 0
        with pytest.raises(http.client.IncompleteRead) as cut:
            r.read()
    got = first + cut.value.partial
    assert 0 < len(got) < info.nar_size
    assert got == _nar(nix, built, path)[: len(got)]
    # Nix sees a failed download, not a path.
    r2 = _realise(nix, tmp_path / "dest", path, client)
    assert r2.returncode != 0, r2.stderr
    assert "Transferred a partial file" in r2.stderr, r2.stderr  # the cut, as curl saw it
    assert "hash mismatch" not in r2.stderr, r2.stderr
    valid = subprocess.run(
        ["nix-store", "--store", str(tmp_path / "dest"), "--check-validity", path],
        capture_output=True,
        env=nix.env,
    )
    assert valid.returncode != 0
    assert any("cut short" in line for line in client.log)


def test_nar_downloads_run_side_by_side(
    nix: Nix, built: Built, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    slow, quick = swarm.start("slow", "quick")
    (client,) = swarm.start("client", bootstrap=[slow.addr, quick.addr], policy=pol)
    # Both too large to be fetched ahead when their narinfos are asked: the NAR requests
    # fetch them.
    a = built.out["broken"]
    (b,) = (p for p in built.closure if p.endswith("-gw-lib-1.0"))
    _publish(slow, built, [a], k["builder"][0])
    _publish(quick, built, [b], k["builder"][0])
    urls = {}
    for p in (a, b):
        status, _, body = _get(f"{client.gateway_url}/{_hash(p)}.narinfo")
        assert status == 200, body
        urls[p] = f"{client.gateway_url}/{NarInfo.decode(body.decode()).url}"
    assert slow.proc is not None
    slow.proc.send_signal(signal.SIGSTOP)  # a's chunks are on their way, for now
    got: dict[str, object] = {}
    waiting = threading.Thread(target=lambda: got.update(a=_get(urls[a])), daemon=True)
    try:
        waiting.start()
        # a's fetch is under way (its path recorded, chunks reserved) before b is asked
        # for; the state is in another process, so it is polled, a bounded number of times.
        for _ in range(100):
            if client.json("status")["store"]["paths"] == 1:
                break
        else:
            raise AssertionError("the client never started fetching a")
        status, _, body = _get(urls[b])
        assert status == 200 and body == _nar(nix, built, b)
        assert waiting.is_alive()  # b did not queue behind a
    finally:
        slow.proc.send_signal(signal.SIGCONT)
    waiting.join(60)
    assert not waiting.is_alive()
    status, _, body = got["a"]  # type: ignore[misc]
    assert status == 200
    assert body == _nar(nix, built, a)


def test_gateway_refuses_a_public_address_unless_told(tmp_path: Path) -> None:
    r = ferry(
        "node",
        "run",
        "--data-dir",
        str(tmp_path / "n"),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--gateway",
        "0.0.0.0:0",
    )
    assert r.returncode == 1
    assert "not a loopback address" in r.stderr and "--gateway-public" in r.stderr
    assert "Traceback" not in r.stderr


# Restarts the node each time it exits, as systemd's Restart= does, while
# systemd-socket-activate holds the gateway's socket; after an exit it waits for $GO.
_SUPERVISOR = """
while :; do
    sh -c 'export LISTEN_PID=$$; exec "$@"' sh "$@"
    [ -e "$STOP" ] && exit 0
    while [ ! -e "$GO" ]; do sleep 0.05; done
    rm -f "$GO"
done
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _queued(port: int) -> int:
    """Connections waiting in the accept queue of the listener on 127.0.0.1:port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == f"0100007F:{port:04X}" and f[3] == "0A":  # LISTEN
            return int(f[4].split(":")[1], 16)
    return 0


def _node_pid(data_dir: Path) -> int | None:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        # The node itself, not the activator or the shell that run it with the same words.
        if cmd[:1] == [sys.executable] and "run" in cmd and str(data_dir) in cmd:
            return p.pid
    return None


@contextlib.contextmanager
def _activated_node(tmp_path: Path, seed: NodeProc, pol: Path) -> Iterator[Activated]:
    """A client node behind systemd-socket-activate (which holds the gateway's port), run
    by a supervisor that restarts it after each exit once `go` exists."""
    require(shutil.which("systemd-socket-activate") is not None, "no systemd-socket-activate")
    port = _free_port()
    data = tmp_path / "client"
    data.mkdir()
    (data / "node.toml").write_text(f'request_timeout = 2\ngateway = "127.0.0.1:{port}"\n')
    stop, go = tmp_path / "stop", tmp_path / "go"
    node = [
        *ARGV,
        "node",
        "run",
        "--data-dir",
        str(data),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--bootstrap",
        seed.addr,
        "--policy",
        str(pol),
    ]
    env = {**os.environ, "STOP": str(stop), "GO": str(go)}
    passed = [x for v in ("PATH", "HOME", "STOP", "GO") for x in ("-E", v)]
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", *passed]
        + ["sh", "-c", _SUPERVISOR, "sh", *node],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Activated(port, data, go)
    finally:
        stop.touch()
        go.touch()
        pid = _node_pid(data)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        activator.wait(timeout=60)


class Activated:
    def __init__(self, port: int, data: Path, go: Path) -> None:
        self.port, self.data, self.go = port, data, go
        self.url = f"http://127.0.0.1:{port}"

    def stop_node(self) -> None:
        """Stop the running node (an upgrade); the next starts once `go` is touched."""
        pid = _node_pid(self.data)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        psutil.wait_procs([psutil.Process(pid)], timeout=60)

    def wait_queued(self, nix: subprocess.Popen[str]) -> None:
        """Until a request waits in the socket's queue (while no node runs)."""
        for _ in range(600):
            if _queued(self.port) > 0 or nix.poll() is not None:
                break
            time.sleep(0.05)  # no event says a connection is queued: look, boundedly
        assert _queued(self.port) > 0, "Nix's request never waited in the socket's queue"
        assert _node_pid(self.data) is None  # no node was there to take it


def test_a_socket_activated_gateway_waits_for_the_node_through_a_restart(
    nix: Nix, built: Built, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    _publish(seed, built, built.closure + [built.out["lonely"]], k["builder-a"][0])
    builder_key = k["builder-a"][1]  # narinfos carry the builder's Nix signature
    with _activated_node(tmp_path, seed, pol) as node:

        def realise(path: str, dest: Path) -> subprocess.Popen[str]:
            return subprocess.Popen(
                ["nix-store", "--store", str(dest), "--realise", path]
                + ["--option", "substituters", node.url]
                + ["--option", "trusted-public-keys", builder_key]
                + ["--option", "narinfo-cache-negative-ttl", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=nix.env,
            )

        # Nothing runs yet: Nix's first request starts the node, and waits for it.
        assert _node_pid(node.data) is None
        r = realise(built.out["lonely"], tmp_path / "d1")
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, err
        # The node stops (an upgrade); Nix asks while none runs: the request waits in
        # the socket's queue, and the next node answers it.
        node.stop_node()
        r = realise(built.out["top"], tmp_path / "d2")
        node.wait_queued(r)
        node.go.touch()
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, err
        for p in built.closure:
            nix.run("nix-store", "--store", str(tmp_path / "d2"), "--verify-path", p)


def test_a_nix_daemon_substitutes_through_the_gateway_across_a_node_restart(
    nix: Nix, built: Built, swarm: Swarm, tmp_path: Path
) -> None:
    """As a multi-user install runs Nix: a nix-daemon (root, its own store and state)
    does the substituting for a client that only talks to its socket."""
    k = keys(tmp_path, "builder-a")
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    _publish(seed, built, built.closure + [built.out["lonely"]], k["builder-a"][0])
    socket_path = tmp_path / "daemon.sock"
    env = {
        **nix.env,
        "NIX_STATE_DIR": str(tmp_path / "state"),
        "NIX_DAEMON_SOCKET_PATH": str(socket_path),
    }
    with _activated_node(tmp_path, seed, pol) as node:
        daemon = subprocess.Popen(
            ["nix-daemon", "--option", "store", str(tmp_path / "root")]
            + ["--option", "substituters", node.url]
            + ["--option", "trusted-public-keys", k["builder-a"][1]]
            + ["--option", "narinfo-cache-negative-ttl", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                if socket_path.exists() or daemon.poll() is not None:
                    break
                time.sleep(0.05)  # the daemon says nothing when it listens: look, boundedly
            assert socket_path.exists(), "nix-daemon did not start"

            def realise(path: str) -> subprocess.Popen[str]:
                return subprocess.Popen(
                    ["nix-store", "--store", "daemon", "--realise", path],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )

            r = realise(built.out["lonely"])
            _, err = r.communicate(timeout=300)
            assert r.returncode == 0, err
            node.stop_node()
            r = realise(built.out["top"])  # a closure of three, while no node runs
            node.wait_queued(r)
            node.go.touch()
            _, err = r.communicate(timeout=300)
            assert r.returncode == 0, err
            for p in built.closure:  # read from the daemon's store's files
                nix.run("nix-store", "--store", str(tmp_path / "root"), "--verify-path", p)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
