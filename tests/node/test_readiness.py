"""`node.addr` is a node's word that it is up: scripts wait for it and then talk to the
node. The instant it appears, the control socket, the Nix gateway and the peer port must
all answer, on a machine whose every core is busy too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import multiaddr
import pytest
import trio

from node.daemon import api, control
from node.daemon.control import ControlError
from tests.inotify import Watch
from tests.p2p.nodes import START_TIMEOUT, NodeProc

NODES = 20


def _listening(node: NodeProc) -> list[str]:
    """What is not accepting connections (the node is stopped: the kernel answers alone)."""
    problems = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(node.data_dir / control.SOCKET))
        except OSError as e:
            problems.append(f"{node.name}: control socket: {e}")
    try:
        url = urllib.parse.urlsplit(node.gateway_url)
        socket.create_connection((url.hostname, url.port), timeout=10).close()
    except OSError as e:
        problems.append(f"{node.name}: gateway: {e}")
    ma = multiaddr.Multiaddr(node.addr)
    try:
        socket.create_connection(
            (ma.value_for_protocol("ip4"), int(ma.value_for_protocol("tcp"))), timeout=10
        ).close()
    except OSError as e:
        problems.append(f"{node.name}: peer port: {e}")
    return problems


def _answers(node: NodeProc) -> list[str]:
    """What does not answer a request."""
    problems = []
    try:
        status = trio.run(control.call, str(node.data_dir), api.StatusRequest())
        assert status.peer_id in node.addr
    except ControlError as e:
        problems.append(f"{node.name}: `ferry status`: {e}")
    try:
        with urllib.request.urlopen(node.gateway_url + "/nix-cache-info", timeout=10) as r:
            assert b"StoreDir: /nix/store" in r.read()
    except OSError as e:
        problems.append(f"{node.name}: GET /nix-cache-info: {e}")
    return problems


@pytest.mark.slow
def test_everything_answers_the_instant_node_addr_appears_on_a_busy_machine(tmp_path: Path) -> None:
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    nodes = [NodeProc(tmp_path, f"n{i}") for i in range(NODES)]
    problems: list[str] = []
    try:
        with Watch() as watch:
            for n in nodes:
                watch.add(n.data_dir)
            pending = {n.data_dir / "node.addr": n.start() for n in nodes}
            deadline = time.monotonic() + 2 * START_TIMEOUT
            while pending:
                appeared = watch.next(deadline)
                assert appeared, (
                    "no node.addr from: "
                    + ", ".join(n.name for n in pending.values())
                    + "\n"
                    + "\n".join(line for n in pending.values() for line in n.log[-5:])
                )
                for path in appeared:
                    node = pending.pop(path, None)
                    if node is None:
                        continue  # one of the other files a starting node writes
                    # Frozen the moment its node.addr appears, the node cannot catch up
                    # before we look: what it promised must already be listening.
                    assert node.proc is not None
                    node.proc.send_signal(signal.SIGSTOP)
                    try:
                        problems += _listening(node)
                    finally:
                        node.proc.send_signal(signal.SIGCONT)
                    problems += _answers(node)
    finally:
        for b in burners:
            b.kill()
            b.wait()
        for n in nodes:
            n.stop()
    assert not problems, "\n".join(problems)
    assert all(n.proc is not None and n.proc.returncode == 0 for n in nodes), (
        "a node did not stop cleanly"
    )


def test_the_service_manager_hears_ready_once_the_node_accepts(tmp_path: Path) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(START_TIMEOUT)
    node = NodeProc(tmp_path, "n", env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        node.start()
        ready = manager.recv(4096)
        # READY=1 only when what node.addr promises accepts: the file is already there.
        assert ready.startswith(b"READY=1\nSTATUS=node ") and (node.data_dir / "node.addr").exists()
        node.wait_ready()
        assert not _listening(node) and not _answers(node)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        assert manager.recv(4096) == b"STOPPING=1\n"
    finally:
        node.stop()
        manager.close()
