"""`ferry realise --lazy` with the real Nix 2.8 (root, real kernel): a closure Nix built on
a builder appears in the client's /nix/store, valid to Nix, while its file data is
fetched only as programs read it.

The client node and its Nix run in a mount namespace of the test's, with a tmpfs on
/nix: the store is at its real place, /nix/store, so programs follow their references,
and nothing of the host's /nix is touched."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import NIX_MK, Nix, require
from tests.ondemand.test_mount import _kernel
from tests.p2p.nodes import NodeProc, Swarm, keys, policy

CLOSURE = (
    """
let"""
    + NIX_MK
    + """
  lib = mk "lazy-lib-1.0" "mkdir $out; seq 1 400000 > $out/data; echo lib > $out/name";
  mid = mk "lazy-mid-1.0" "mkdir $out; echo ${lib} > $out/lib-ref; seq 7 7 700000 > $out/table";
in mk "lazy-top-1.0" ''
  mkdir -p $out/bin; echo ${mid} > $out/mid-ref
  printf '#!/bin/sh\\ncat ${lib}/name\\n' > $out/bin/run; chmod +x $out/bin/run
''
"""
)


class Namespace:
    """A private mount namespace, kept alive by a sleeping process, with a tmpfs on /nix."""

    def __init__(self) -> None:
        # In the checkout: what runs in the namespace runs there (nsenter --wd below).
        self.keeper = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
            cwd=Path(__file__).parents[2],
        )
        self.ns = f"/proc/{self.keeper.pid}/ns/mnt"
        for _ in range(400):  # unshare has run once its process's namespace differs from ours
            if os.readlink(self.ns) != os.readlink("/proc/self/ns/mnt"):
                break
            if self.keeper.poll() is not None:
                raise AssertionError("unshare --mount failed")
            os.sched_yield()
        # --root and --wd: entering a mount namespace puts a process at the namespace's
        # own root, which in a chroot (CI's) is not the root the tests run in.
        self.prefix = (
            "nsenter",
            f"--target={self.keeper.pid}",
            "--mount",
            "--root",
            "--wd",
            "--",
        )
        self.run("mount", "-t", "tmpfs", "ferry-test-nix", "/nix")

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, env=env, timeout=300
        )

    def close(self) -> None:
        """Every process in the namespace goes (the node's fanotify holder among them),
        and with the last the namespace and its mounts."""
        ns = os.readlink(self.ns)
        inside = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.readlink(f"/proc/{p.pid}/ns/mnt") == ns:
                    inside.append(p)
        for p in inside:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(inside, timeout=30)
        self.keeper.kill()  # among them, unless it was gone already
        self.keeper.wait(30)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    require(os.geteuid() == 0, "a mount namespace with /nix of its own needs root")
    # The host's /nix stays as it is: the namespace mounts over it, so it must exist.
    os.makedirs("/nix", exist_ok=True)
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.close()


def _build(nix: Nix, root: Path) -> tuple[Path, str, list[str]]:
    store = root / "store"
    root.mkdir()
    (root / "closure.nix").write_text(CLOSURE)
    top = nix.run("nix-build", "--store", str(store), str(root / "closure.nix"), "--no-out-link")
    top_path = top.decode().strip()
    closure = nix.run("nix-store", "--store", str(store), "-qR", top_path).decode().split()
    return store, top_path, sorted(closure)


def _mounts(client: NodeProc) -> dict[str, dict]:
    return {m["store_path"]: m for m in client.json("mounts")}


@pytest.mark.kernel
@pytest.mark.slow
def test_realise_lazy_makes_a_closure_valid_and_fetches_on_read(
    nix: Nix, swarm: Swarm, namespace: Namespace, tmp_path: Path
) -> None:
    _kernel()
    store, top, closure = _build(nix, tmp_path / "build")
    assert len(closure) == 3
    lib = next(p for p in closure if "lazy-lib" in p)
    mid = next(p for p in closure if "lazy-mid" in p)
    k = keys(tmp_path, "builder")
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (builder,) = swarm.start("builder")
    for p in closure:
        builder.json("publish", p, "--store", str(store), "--key", str(k["builder"][0]))
    (client,) = swarm.start("client", bootstrap=[builder.addr], policy=pol, wrap=namespace.prefix)

    def nix_in(*args: str) -> subprocess.CompletedProcess[str]:
        return namespace.run(*args, env=nix.env)

    got = client.json("realise", "--lazy", top)
    assert [r["store_path"] for r in got] == [lib, mid, top]  # references first
    assert {r["how"] for r in got} == {"mounted"} and {r["backend"] for r in got} == {"fanotify"}
    # Nothing but claims and manifests came: no file data before the first read.
    mounts = _mounts(client)
    assert sum(m["bytes_total"] for m in mounts.values()) > 2_000_000
    assert sum(m["bytes_present"] for m in mounts.values()) == 0
    # Nix answers from its own database, as the builder's Nix does.
    for p in closure:
        assert (
            nix_in("nix-store", "-q", "--references", p).stdout.split()
            == nix.run("nix-store", "--store", str(store), "-q", "--references", p).decode().split()
        )
    # A program from the lazy path reads a file of its reference.
    r = nix_in(f"{top}/bin/run")
    assert (r.returncode, r.stdout) == (0, "lib\n"), r.stderr
    assert sum(m["bytes_present"] for m in _mounts(client).values()) == 0  # both inline
    r = nix_in("cat", f"{lib}/data")
    assert r.stdout == "".join(f"{i}\n" for i in range(1, 400_001))
    assert _mounts(client)[lib]["bytes_present"] == _mounts(client)[lib]["bytes_total"]
    assert _mounts(client)[mid]["bytes_present"] == 0

    # Nix's collector keeps them; a delete is refused with the root that holds them.
    r = nix_in("nix-store", "--gc")
    assert r.returncode == 0, r.stderr
    r = nix_in("nix-store", "--delete", lib)
    assert r.returncode != 0 and "still alive" in r.stderr
    for p in closure:
        r = nix_in("nix-store", "--verify-path", p)  # reads every byte: fetches the rest
        assert r.returncode == 0, r.stderr
    r = nix_in("nix-store", "--verify", "--check-contents")
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr

    # A restart leaves them mounted and serves them again; a reboot (every mount gone,
    # and the fanotify holder with them) finds them mounted again at start.
    assert client.stop() == 0
    assert nix_in("mountpoint", "-q", top).returncode == 0
    client.start().wait_ready()
    assert set(_mounts(client)) == set(closure)
    client.wait_log("serving /nix/store/", count=3)  # the mounts it found in place
    assert client.stop() == 0
    for p in closure:
        assert nix_in("umount", p).returncode == 0
    for p in psutil.process_iter(["cmdline"]):
        if "ondemand.holder" in " ".join(p.info["cmdline"] or []) and str(client.data_dir) in (
            " ".join(p.info["cmdline"] or [])
        ):
            p.kill()
            p.wait(30)
    assert nix_in("mountpoint", "-q", top).returncode != 0
    client.start().wait_ready()
    client.wait_log("mounted /nix/store/", count=3)  # "... again": mounted afresh
    assert nix_in("mountpoint", "-q", top).returncode == 0
    r = nix_in(f"{top}/bin/run")
    assert (r.returncode, r.stdout) == (0, "lib\n"), r.stderr + "\n".join(client.log[-20:])

    # `ferry umount` lets a path go through Nix, only once nothing valid refers to it.
    r = client.ferry("umount", lib)
    assert r.returncode == 1 and f"still needed by {mid}" in r.stderr
    for p in (top, mid, lib):
        r = client.ferry("umount", p)
        assert r.returncode == 0, r.stderr
        assert nix_in("nix-store", "--check-validity", p).returncode != 0
        assert nix_in("test", "-e", p).returncode != 0
    assert client.json("mounts") == []

    # Without --lazy: fetched whole and written into the store, then registered alike.
    r = client.ferry("realise", top)
    assert r.returncode == 0, r.stderr
    assert "written whole" in r.stdout and "lazy-lib-1.0" in r.stdout
    assert nix_in("mountpoint", "-q", top).returncode != 0
    r = nix_in(f"{top}/bin/run")
    assert (r.returncode, r.stdout) == (0, "lib\n"), r.stderr
    for p in closure:
        r = nix_in("nix-store", "--verify-path", p)
        assert r.returncode == 0, r.stderr
    r = client.ferry("realise", top)  # again: Nix has them all
    assert r.returncode == 0 and r.stdout.count("valid already") == 3, r.stdout
