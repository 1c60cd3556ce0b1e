"""A QEMU machine (TCG: this machine's /dev/kvm cannot run a stock kernel) that boots a
Debian kernel with a busybox initramfs, sees this machine's root read-only over 9p, and
runs one command in it as root, chrooted there, in this checkout.

The guest's writable places: an ext4 virtio disk at /mnt (cachefiles needs a backing
file system with xattrs and direct I/O; tmpfs on 6.1 has no direct I/O), where TMPDIR
and HOME point, and tmpfs on /run and /dev/shm. Its network is its own loopback.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm import initramfs
from tests.vm.debian_kernel import DebianKernel

log = logging.getLogger(__name__)

# The kernel's own modules the guest needs (each with what it depends on), then the two
# rebuilt ones.
STOCK = ["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "crc32c_generic", "ext4", "fscache"]
REBUILT = ["cachefiles", "erofs"]
RESULT = re.compile(r"FERRY-VM-RESULT (\d+)")

# 9p with cache=loose uses fscache: once ferry binds the (only) cache in ondemand mode,
# every file the guest opens over 9p logs this, harmlessly (docs/operations.md). It is left
# out of failure messages. (cache=mmap avoids it but makes the test 1.7 times slower.)
NOISE = "CacheFiles: WANT_CACHE_SIZE is needed for on-demand mode"

INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "FERRY-VM-KERNEL $(uname -r)"
for m in /modules/*.ko; do
    insmod "$m" || echo "FERRY-VM: insmod $m failed"
done
ip link set lo up
fail() { echo "FERRY-VM: $*"; echo "FERRY-VM-RESULT 99"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host \
    || fail "cannot mount the host's root over 9p"
mount -t ext4 /dev/vda /host/mnt || fail "cannot mount the ext4 disk"
mount -t proc proc /host/proc || echo "FERRY-VM: no /proc"
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
mkdir -p /host/dev/shm /host/mnt/tmp /host/mnt/home
mount -t tmpfs shm /host/dev/shm
cp /command /host/mnt/command
chroot /host /bin/sh /mnt/command
echo "FERRY-VM-RESULT $?"
sync
poweroff -f
"""


class VMError(RuntimeError):
    """The VM could not be started or did not finish; the message has its console's tail."""


@dataclass(frozen=True)
class Outcome:
    returncode: int
    kernel: str  # `uname -r` in the guest
    console: str
    seconds: float


def _static(elf: Path) -> bool:
    """No program interpreter (PT_INTERP): the binary runs without a libc beside it."""
    with open(elf, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":
            return False
        phoff, phentsize, phnum = (
            struct.unpack_from("<Q", head, 32)[0],
            *struct.unpack_from("<HH", head, 54),
        )
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def busybox() -> Path:
    for p in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if p.exists() and _static(p):
            return p
    # Debian's `busybox` is linked dynamically: the initramfs has no libc for it.
    raise VMError("no static busybox here: apt-get install busybox-static")


def run(
    kernel: DebianKernel,
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    memory_mib: int = 3072,
    disk_mib: int = 4096,
) -> Outcome:
    """Boot, run `argv` in `cwd` (a path on this machine, seen at the same place in the
    guest) with exactly `env`, power off. The console goes to the log as it comes."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise VMError("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")
    find = {
        ko.name.removesuffix(".ko").replace("-", "_"): ko for ko in kernel.modules.rglob("*.ko")
    }
    find.update(kernel.rebuilt)
    modules = initramfs.load_order([*STOCK, *REBUILT], find)
    command = " ".join(
        [
            "cd",
            shlex.quote(str(cwd)),
            "&&",
            "exec",
            "env",
            "-i",
            *(shlex.quote(f"{k}={v}") for k, v in env.items()),
            *map(shlex.quote, argv),
        ]
    )
    with tempfile.TemporaryDirectory(prefix="ferry-vm-") as tmp:
        initrd = Path(tmp) / "initrd.gz"
        initrd.write_bytes(
            initramfs.build(busybox(), modules, INIT, {"command": command.encode() + b"\n"})
        )
        disk = Path(tmp) / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(disk_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True, capture_output=True)
        cmd = [
            qemu,
            "-accel",
            "tcg,thread=multi",
            # The plainest model: Python imports libp2p in 18 s under it, 27 s under "max".
            "-cpu",
            "qemu64",
            "-smp",
            str(os.cpu_count() or 1),
            "-m",
            str(memory_mib),
            "-kernel",
            str(kernel.vmlinuz),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4",
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            "-drive",
            f"file={disk},if=virtio,format=raw,cache=unsafe",
            "-nic",
            "none",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        lines: list[str] = []

        def drain() -> None:
            assert proc.stdout is not None
            with proc.stdout:
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if NOISE not in line:
                        lines.append(line)
                        log.info("vm: %s", line)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            raise VMError(
                f"the VM did not finish in {timeout:.0f} s:\n" + "\n".join(lines[-60:])
            ) from None
        reader.join(5)
    console = "\n".join(lines)
    seconds = time.monotonic() - t0
    result = RESULT.search(console)
    kernel_line = re.search(r"FERRY-VM-KERNEL (\S+)", console)
    if result is None or kernel_line is None:
        raise VMError(
            f"the VM stopped without a result (qemu exit {proc.returncode}):\n{console[-6000:]}"
        )
    return Outcome(int(result.group(1)), kernel_line.group(1), console, seconds)
