"""The cachefiles ondemand backend on a real kernel: QEMU boots Debian's stock kernel (the
one `linux-image-amd64` names) with its `cachefiles` and `erofs` modules rebuilt with the
ondemand options, and runs tests/vm/guest there as root against a real /dev/cachefiles.

Several minutes under TCG, so it runs when asked (`./run vm`, or FERRY_VM=1) and in CI
when the code it covers changed since the last run that passed (`.ci/vm-stamp`)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.vm import debian_kernel, machine

REPO = Path(__file__).parents[2]


@pytest.mark.vm
@pytest.mark.slow(seconds=400)
def test_cachefiles_ondemand_on_a_stock_debian_kernel() -> None:
    for tool, package in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("make", "make"),
        ("apt-get", "apt"),
    ]:
        require(shutil.which(tool) is not None, f"{tool} is not installed ({package})")
    cache = Path(os.environ.get("FERRY_VM_CACHE", REPO / ".cache" / "vm"))
    kernel = debian_kernel.fetch(cache)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/mnt/home",
        "TMPDIR": "/mnt/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is read-only in the guest
        "FERRY_VM_GUEST": "1",
        "FERRY_REQUIRE_KERNEL": "1",
        "FERRY_TEST_SLOWDOWN": "10",  # TCG runs Python about 15 times slower
    }
    out = machine.run(
        kernel,
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "-q",
            "-rA",
            "--color=no",
            "tests/vm/guest",
        ],
        cwd=REPO,
        env=env,
        timeout=1500,
    )
    print(f"booted {out.kernel} ({kernel.version}); the VM ran {out.seconds:.0f} s, tests included")
    assert out.kernel == kernel.release
    assert out.returncode == 0, out.console[-12000:]
    assert re.search(r"\b1 passed\b", out.console) and "skipped" not in out.console
