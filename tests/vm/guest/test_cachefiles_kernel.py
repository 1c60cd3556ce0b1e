"""ferry's cachefiles ondemand backend against a real /dev/cachefiles (run inside the VM
that tests/vm/test_cachefiles_vm.py boots: a stock Debian kernel with the `cachefiles`
and `erofs` modules rebuilt with their ondemand options). The data is on another node,
reached over libp2p on the guest's loopback."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from ondemand import probe
from store.chunking import digest
from tests.conftest import require
from tests.p2p.nodes import Swarm, keys, policy, rot_chunk

SP = "/nix/store/" + "c" * 32 + "-cached-1.0"


def _tree(root: Path) -> Path:
    rnd = random.Random(7)
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "two-mib.so").write_bytes(rnd.randbytes(2 << 20))
    (root / "lib" / "odd.dat").write_bytes(rnd.randbytes(3 * 4096 + 100))  # not whole pages
    (root / "share").mkdir()
    for i in range(20):
        (root / "share" / f"doc{i}.txt").write_bytes(rnd.randbytes(rnd.randint(100, 9000)))
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    return root


def _step(what: str) -> None:
    """A line in the kernel's log, so the console shows the kernel's messages in the
    test's steps."""
    with open("/dev/kmsg", "w") as f:
        f.write(f"<3>ferry test: {what}\n")  # <3>: printed on the console


def _mount_options(mnt: Path) -> str:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mnt):
            return f"{fields[2]} {fields[3]}"
    raise AssertionError(f"{mnt} is not mounted")


@pytest.mark.kernel
def test_a_path_served_through_a_real_dev_cachefiles(swarm: Swarm, tmp_path: Path) -> None:
    require(os.path.exists("/dev/cachefiles"), "no /dev/cachefiles (modprobe cachefiles)")
    # The rebuilt modules are what `ferry doctor` looks for when /boot's config says no.
    assert probe.loaded_options() == set(probe.ONDEMAND_SYMBOLS)
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (seed,) = swarm.start("seed", timeout=10.0)
    (client,) = swarm.start(
        "client", bootstrap=[seed.addr], policy=pol, timeout=10.0, config="read_deadline = 30\n"
    )
    src = _tree(tmp_path / "src")
    seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
    # The seed's only copy of one file's chunk rots: nobody will serve it.
    rot_chunk(seed, digest((src / "share" / "doc0.txt").read_bytes()))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _step("mount")
    got = client.json("mount", SP, str(mnt), "--backend", "cachefiles")
    assert got["backend"] == "cachefiles"
    options = _mount_options(mnt)
    assert options.startswith("erofs ") and "fsid=" in options and "domain_id=ferry" in options

    _step("reads")
    # Metadata came with the image: listing fetches nothing.
    assert sorted(os.listdir(mnt / "share"))[:2] == ["doc0.txt", "doc1.txt"]
    for f in ("lib/two-mib.so", "lib/odd.dat", "share/doc1.txt"):
        assert (mnt / f).read_bytes() == (src / f).read_bytes(), f
    assert subprocess.run([str(mnt / "bin" / "tool")], capture_output=True).stdout == b"hi\n"
    _step("a chunk nobody has")
    r = subprocess.run(["cat", str(mnt / "share" / "doc0.txt")], capture_output=True, timeout=120)
    assert r.returncode != 0 and r.stdout == b"", r
    assert b"Input/output error" in r.stderr, r.stderr

    # Killed: the holder keeps /dev/cachefiles (closing it would withdraw the cache), and
    # the next node takes it over and serves the files not read yet.
    _step("kill")
    client.kill(signal.SIGKILL)
    assert os.path.ismount(mnt)
    client.start().wait_ready()
    _step("restarted")
    for f in ("share/doc2.txt", "share/doc3.txt", "lib/two-mib.so"):
        assert (mnt / f).read_bytes() == (src / f).read_bytes(), f
    _step("stop")
    assert client.stop() == 0
    assert not os.path.ismount(mnt)
