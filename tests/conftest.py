"""Shared fixtures. Tests needing something outside Python (Nix, root, a kernel
feature) skip with a reason, except under FERRY_REQUIRE_KERNEL=1 (CI), where a missing
requirement is a failure: CI must run them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from store import nixconf

if TYPE_CHECKING:
    from tests.p2p.nodes import Swarm

settings.register_profile(
    "ferry",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ferry")


def _expected_seconds(item: pytest.Item) -> float:
    slow = item.get_closest_marker("slow")
    return 0.0 if slow is None else float(slow.kwargs.get("seconds", 10))


def pytest_report_header(config: pytest.Config) -> str:
    # pytest-xdist's summary leaves out what its workers deselected: say it here.
    if os.environ.get("FERRY_VM") == "1":
        return "VM tests (tests/vm): included (FERRY_VM=1)"
    return "VM tests (tests/vm): deselected; run them with ./run vm"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that boot a VM take minutes: they run when asked (FERRY_VM=1: `./run vm`, and
    # .ci/run when the code they cover changed), and are listed as deselected otherwise.
    if os.environ.get("FERRY_VM") != "1":
        vm = [i for i in items if i.get_closest_marker("vm")]
        if vm:
            config.hook.pytest_deselected(items=vm)
            items[:] = [i for i in items if not i.get_closest_marker("vm")]
    # Longest first: pytest-xdist hands tests out round robin, so the long ones are spread
    # over the cores and none is left to run alone at the end while the others idle.
    items.sort(key=_expected_seconds, reverse=True)


def require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("FERRY_REQUIRE_KERNEL") == "1":
        pytest.fail(f"required under FERRY_REQUIRE_KERNEL=1 but missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _hermetic_nix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Every Nix the tests run, directly or through a ferry process, reads the project's own
    # nix.conf: nothing in the host's /etc/nix, ~/.config/nix or /etc/group changes a result.
    with pytest.MonkeyPatch.context() as mp:
        env = nixconf.environ(tmp_path_factory.mktemp("nix-conf"))
        for name in [n for n in os.environ if n not in env]:
            mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        yield


class Nix:
    """The real Nix 2.8 CLI, under the project's nix.conf, with caches out of the user's home."""

    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "HOME": str(home)}

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        proc = subprocess.run(list(args), input=input, capture_output=True, env=self.env)
        if proc.returncode:
            raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    def dump(self, path: Path | str) -> bytes:
        return self.run("nix-store", "--dump", str(path))

    def restore(self, path: Path | str, data: bytes) -> None:
        self.run("nix-store", "--restore", str(path), input=data)

    def hash_path(self, path: Path | str) -> str:
        return self.run("nix-hash", "--type", "sha256", "--base32", str(path)).decode().strip()


@pytest.fixture(scope="session")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Nix:
    require(shutil.which("nix-store") is not None, "Nix is not installed (Debian: nix-bin)")
    return Nix(tmp_path_factory.mktemp("nix-home"))


# A small input-addressed closure (top -> dep), built by Nix in a chroot store: signature
# tests need input-addressed paths, since Nix accepts content-addressed ones unsigned.
# `mk NAME SCRIPT`: an input-addressed derivation that runs SCRIPT with the host's /bin/sh
# (the project's nix.conf lets /bin, /lib and /usr into the sandbox).
NIX_MK = """
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/bin:/usr/bin"; args = ["-c" script];
  };
"""

CLOSURE_NIX = (
    """
let"""
    + NIX_MK
    + """
  dep = mk "dep-1.0" "echo dep > $out";
in mk "top-1.0" "mkdir $out; echo ${dep} > $out/ref; echo hi > $out/x; ln -s x $out/link"
"""
)


class Closure:
    def __init__(self, nix: Nix, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.cache = root / "cache"
        (root / "closure.nix").write_text(CLOSURE_NIX)
        common = ["--store", str(self.store)]
        self.top = (
            nix.run("nix-build", *common, str(root / "closure.nix"), "--no-out-link")
            .decode()
            .strip()
        )
        self.keys = []
        for name in ("builder-a", "builder-b"):
            sk, pk = root / f"{name}.sec", root / f"{name}.pub"
            nix.run("nix-store", "--generate-binary-cache-key", name, str(sk), str(pk))
            self.keys.append((sk, pk))
            nix.run(
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "store",
                "sign",
                *common,
                "--key-file",
                str(sk),
                "--recursive",
                self.top,
            )
        nix.run(
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--from",
            str(self.store),
            "--to",
            f"file://{self.cache}?compression=none",
            self.top,
        )
        self.paths = sorted(
            line
            for line in nix.run("nix-store", "--store", str(self.store), "-qR", self.top)
            .decode()
            .split()
        )


@pytest.fixture(scope="session")
def nix_closure(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Closure:
    return Closure(nix, tmp_path_factory.mktemp("closure"))


@pytest.fixture(autouse=True)
def _private_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never let a test (or a `ferry` it runs) touch the user's or root's real store.
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path_factory.mktemp("ferry-data")))


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    """Node processes for one test, stopped at its end whatever happens."""
    from tests.p2p.nodes import Swarm

    s = Swarm(tmp_path / "nodes")
    yield s
    s.stop()
