"""`ferry mount` end to end (root, real kernel): the data is on another node, reached over
libp2p; the client node mounts the path and fetches only what programs read."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import trio

from node.daemon.config import NodeConfig
from node.daemon.mounts import HOLDER_SOCKET, Mounts
from node.daemon.nodestore import NodeStore
from node.local.store import LocalStore
from ondemand import fanotify, syscalls
from tests.conftest import require
from tests.p2p.nodes import NodeProc, Swarm, keys, policy, rot_chunk

SP = "/nix/store/" + "6" * 32 + "-lazy-1.0"
SP2 = "/nix/store/" + "7" * 32 + "-lazy-1.1"


def _kernel() -> None:
    require(os.geteuid() == 0, "fanotify pre-content and mount(2) need root")
    try:
        os.close(
            syscalls.fanotify_init(fanotify.FAN_CLASS_PRE_CONTENT | fanotify.FAN_CLOEXEC, os.O_RDWR)
        )
    except OSError as e:
        require(False, f"this kernel has no fanotify pre-content events (Linux 6.14+): {e}")


def _tree(root: Path, big_files: int) -> Path:
    rnd = random.Random(5)
    (root / "lib").mkdir(parents=True)
    for i in range(big_files):
        (root / "lib" / f"big{i}.so").write_bytes(rnd.randbytes(20 << 20))
    (root / "lib" / "one-mib.dat").write_bytes(rnd.randbytes(1 << 20))
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "share").mkdir()
    for i in range(200):
        (root / "share" / f"doc{i}.txt").write_bytes(rnd.randbytes(rnd.randint(100, 9000)))
    os.symlink("../lib/one-mib.dat", root / "bin" / "data")
    return root


def _wchan(pid: int) -> str:
    """Where in the kernel the process sleeps (root reads the symbol)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return "gone"


def _waits_on_fanotify(pid: int) -> bool:
    return "fanotify" in _wchan(pid)  # fanotify_handle_event: waiting for a verdict


def _present(client: NodeProc, d: Path) -> int:
    return next(m["bytes_present"] for m in client.json("mounts") if m["dir"] == str(d))


@pytest.mark.kernel
@pytest.mark.slow
def test_mount_fetches_what_is_read(swarm: Swarm, tmp_path: Path) -> None:
    _kernel()
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    (client,) = swarm.start("client", bootstrap=[seed.addr], policy=pol)
    src = _tree(
        tmp_path / "src", big_files=5
    )  # about 110 MB (bench/ondemand.py lists a 200 MiB path)
    seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    r = client.ferry("mount", SP, str(full))
    assert r.returncode == 1 and "is not empty" in r.stderr and not os.path.ismount(full)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    got = client.json("mount", SP, str(mnt))
    assert got["backend"] == "fanotify" and got["bytes_total"] > 100_000_000
    try:
        r = subprocess.run(["find", str(mnt), "-ls"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "one-mib.dat" in r.stdout
        assert _present(client, mnt) == 0  # listing reads metadata only
        r = subprocess.run(
            ["cat", str(mnt / "lib" / "one-mib.dat")], capture_output=True, timeout=60
        )
        assert r.stdout == (src / "lib" / "one-mib.dat").read_bytes()
        assert _present(client, mnt) <= 2 << 20
        r = subprocess.run(
            ["diff", "-r", "--no-dereference", str(src), str(mnt)], capture_output=True, timeout=300
        )
        assert r.returncode == 0, r.stdout[-2000:]
        assert _present(client, mnt) == got["bytes_total"]

        # The client serves the path on from its marked slab: its own reads raise events
        # it must not wait for itself.
        (other,) = swarm.start("other", bootstrap=[client.addr], policy=pol)
        fetched = other.json("fetch", SP)
        assert fetched["per_peer"].get(client.peer_id, 0) > 0

        # Another version of the package: its unchanged chunks are already here.
        v2 = tmp_path / "v2"
        subprocess.run(["cp", "-a", str(src), str(v2)], check=True)
        (v2 / "bin" / "tool").write_bytes(b"#!/bin/sh\necho v2\n")
        seed.json("publish", str(v2), "--store-path", SP2, "--key", str(k["builder"][0]))
        mnt2 = tmp_path / "mnt2"
        mnt2.mkdir()
        got2 = client.json("mount", SP2, str(mnt2))
        assert _present(client, mnt2) == got2["bytes_total"]  # every chunk shared with 1.0
        assert (
            subprocess.run(["cat", str(mnt2 / "bin" / "tool")], capture_output=True).stdout
            == b"#!/bin/sh\necho v2\n"
        )
        client.ferry("umount", str(mnt2))
    finally:
        r = client.ferry("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(mnt) and client.json("mounts") == []
    assert not (client.data_dir / "fanotify.sock").exists()  # nothing mounted: the group is gone
    # Remount works, now from the local store.
    client.json("mount", SP, str(mnt))
    assert (mnt / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert client.stop() == 0
    assert not os.path.ismount(mnt)  # a stopping node unmounts


def test_materialize_backend_writes_the_tree(swarm: Swarm, tmp_path: Path) -> None:
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    (client,) = swarm.start("client", bootstrap=[seed.addr], policy=pol)
    src = _tree(tmp_path / "src", big_files=1)
    seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
    dest = tmp_path / "dest"
    if not os.path.exists(
        "/dev/cachefiles"
    ):  # as on these machines: a plain refusal, then another backend
        dest.mkdir()
        r = client.ferry("mount", SP, str(dest), "--backend", "cachefiles")
        assert (
            r.returncode == 1
            and "cannot bind /dev/cachefiles" in r.stderr
            and "ferry doctor" in r.stderr
        )
        dest.rmdir()
    got = client.json("mount", SP, str(dest), "--backend", "materialize")
    assert got["backend"] == "materialize"
    r = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(dest)], capture_output=True)
    assert r.returncode == 0, r.stdout[-2000:]
    assert [m["dir"] for m in client.json("mounts")] == [str(dest)]
    r = client.ferry("mount", SP, str(dest), "--backend", "materialize")
    assert r.returncode == 1 and "already a ferry mount" in r.stderr
    assert client.ferry("umount", str(dest)).returncode == 0
    assert (dest / "bin" / "tool").exists()  # a materialized tree stays
    r = client.ferry("umount", str(dest))
    assert r.returncode == 2 and "not a ferry mount" in r.stderr


READER = """
import hashlib, sys
h = hashlib.sha256()
try:
    with open(sys.argv[1], "rb", buffering=0) as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
except OSError as e:
    print("ERR", e.errno)
else:
    print(h.hexdigest())
"""


@pytest.mark.kernel
@pytest.mark.slow
def test_killing_the_node_never_hands_readers_zeros(swarm: Swarm, tmp_path: Path) -> None:
    _kernel()
    import hashlib
    import signal

    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    (client,) = swarm.start("client", bootstrap=[seed.addr], policy=pol)
    src = _tree(tmp_path / "src", big_files=4)
    seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    client.json("mount", SP, str(mnt))
    files = [f"lib/big{i}.so" for i in range(4)]
    readers = [
        subprocess.Popen(["python3", "-c", READER, str(mnt / f)], stdout=subprocess.PIPE, text=True)
        for f in files
    ]
    # Kill the node once reading is under way (chunks are arriving), not before.
    with_progress = False
    for _ in range(200):
        if _present(client, mnt) > 0:
            with_progress = True
            break
    assert with_progress
    client.kill(signal.SIGKILL)
    assert os.path.ismount(mnt)  # the mount and, in its holder, the fanotify group outlive the node
    # A read that starts while no node runs waits (in the kernel, on the held group) for
    # the next node. The readers above may all have had a read in the dead node's hands,
    # answered with EIO by the next one: this read had not.
    late = subprocess.Popen(
        ["python3", "-c", READER, str(mnt / "lib" / "one-mib.dat")],
        stdout=subprocess.PIPE,
        text=True,
    )
    for _ in range(200):
        if _waits_on_fanotify(late.pid):
            break
        time.sleep(0.05)  # no event says a process sleeps in the kernel: look, boundedly
    else:
        raise AssertionError(f"the late reader never waited on the group ({_wchan(late.pid)})")
    client.start().wait_ready()
    outcomes = [r.communicate(timeout=300)[0].strip() for r in readers]
    for f, got in zip(files, outcomes):
        want = hashlib.sha256((src / f).read_bytes()).hexdigest()
        assert got == want or got == "ERR 5", (f, got)  # right bytes or EIO, never zeros
    want = hashlib.sha256((src / "lib" / "one-mib.dat").read_bytes()).hexdigest()
    # The restarted node served it (it waits for its peers before fetching).
    assert late.communicate(timeout=300)[0].strip() == want, "\n".join(client.log[-20:])
    r = subprocess.run(
        ["cmp", str(src / files[0]), str(mnt / files[0])], capture_output=True, timeout=300
    )
    assert r.returncode == 0  # and reads after the restart are right
    assert client.stop() == 0
    assert not os.path.ismount(mnt)
    # No group left behind: the holder dropped it before answering the stopping node, and exits.
    assert not (client.data_dir / "fanotify.sock").exists()
    holders = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "ondemand.holder" in " ".join(p.info["cmdline"] or [])
        and str(client.data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    _, alive = psutil.wait_procs(holders, timeout=10)
    assert not alive


@pytest.mark.kernel
def test_a_chunk_no_peer_has_fails_the_read_with_eio(swarm: Swarm, tmp_path: Path) -> None:
    _kernel()

    from store.chunking import digest

    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed")
    (client,) = swarm.start(
        "client", bootstrap=[seed.addr], policy=pol, config="read_deadline = 5\n"
    )
    src = _tree(tmp_path / "src", big_files=0)
    seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
    # The seed's only copy of one file's chunk rots: it will not serve it, and nobody else has it.
    rot_chunk(seed, digest((src / "share" / "doc0.txt").read_bytes()))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    client.json("mount", SP, str(mnt))
    try:
        t = time.monotonic()
        r = subprocess.run(
            ["cat", str(mnt / "share" / "doc0.txt")], capture_output=True, timeout=60
        )
        assert r.returncode != 0 and b"Input/output error" in r.stderr and r.stdout == b""
        assert time.monotonic() - t < 5 + 3  # within the deadline (and its fetch's own failure)
        assert (mnt / "share" / "doc1.txt").read_bytes() == (
            src / "share" / "doc1.txt"
        ).read_bytes()
    finally:
        assert client.ferry("umount", str(mnt)).returncode == 0


@pytest.mark.kernel
# The node drops its Popen of the holder on purpose (the holder outlives a killed node);
# Python warns of that when the object is collected, here inside the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_holder_started_as_the_node_stops_does_not_outlive_it(tmp_path: Path) -> None:
    """A mount that starts the fanotify holder just as the node stops (Ctrl-C during
    `ferry demo`'s mount) must not leave the holder running with nothing to serve."""
    _kernel()
    data = tmp_path / "data"
    with LocalStore(str(data)) as local:
        store = NodeStore(local, diff_level=3)
        no_network = SimpleNamespace(net=None)  # nothing is fetched here
        mounts = Mounts(str(data), NodeConfig(), store, sessions=no_network)  # type: ignore[arg-type]
        starting = threading.Event()
        start = mounts._start_holder

        def start_holder() -> int:
            starting.set()
            return start()

        mounts._start_holder = start_holder  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(mounts.run)
            nursery.start_soon(mounts._ensure_group)
            await trio.to_thread.run_sync(starting.wait, 30)
            nursery.cancel_scope.cancel()  # the node stops while the holder starts
        store.close()
    socket_path = str(data / HOLDER_SOCKET)
    holders = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "ondemand.holder" in (p.info["cmdline"] or []) and socket_path in p.info["cmdline"]
    ]
    # Released, a holder exits at once; one nobody released holds on forever.
    _, alive = psutil.wait_procs(holders, timeout=10)
    for p in alive:
        p.kill()  # not left for the next test
    assert not alive, "the holder outlived the node"


@pytest.mark.kernel
def test_the_holder_serves_from_a_data_dir_longer_than_a_socket_address(tmp_path: Path) -> None:
    _kernel()
    from ondemand import holder

    deep = tmp_path / ("d" * 60) / ("e" * 60)  # past the kernel's 107 bytes for a socket
    deep.mkdir(parents=True)
    path = str(deep / HOLDER_SOCKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondemand.holder", path],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == b"ready\n", f"the holder exited {proc.wait()}"
    os.close(holder.borrow(path))
    holder.release(path)
    assert proc.wait(timeout=30) == 0 and not os.path.exists(path)
