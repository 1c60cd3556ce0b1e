"""What this kernel and this process can do for lazy mounts, and which backend runs.

Each backend needs (Linux config options, read from /proc/config.gz or /boot when the
kernel exposes them; the live checks decide when it does not):
  fanotify     root, CONFIG_FANOTIFY_ACCESS_PERMISSIONS (pre-content events: 6.14+),
               CONFIG_EROFS_FS and CONFIG_EROFS_FS_BACKED_BY_FILE (6.12+)
  cachefiles   root, CONFIG_CACHEFILES_ONDEMAND and CONFIG_EROFS_FS_ONDEMAND
               (5.19 to 7.1), /dev/cachefiles
  materialize  nothing
"""

from __future__ import annotations

import gzip
import os
import platform
from dataclasses import dataclass, field

from ondemand import fanotify, syscalls

NEEDS = {
    "fanotify": (
        "CONFIG_FANOTIFY_ACCESS_PERMISSIONS",
        "CONFIG_EROFS_FS",
        "CONFIG_EROFS_FS_BACKED_BY_FILE",
    ),
    "cachefiles": ("CONFIG_CACHEFILES_ONDEMAND", "CONFIG_EROFS_FS_ONDEMAND"),
}


@dataclass(frozen=True)
class Backend:
    name: str
    usable: bool
    missing: tuple[str, ...] = ()  # why not, each a fix a user can act on


@dataclass(frozen=True)
class Report:
    kernel: str
    root: bool
    backends: tuple[Backend, ...] = field(default_factory=tuple)

    @property
    def chosen(self) -> str:
        return next(b.name for b in self.backends if b.usable)


def kernel_config() -> dict[str, str] | None:
    """CONFIG_* -> y/m/value, if the running kernel's config can be read."""
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                return {
                    k: v
                    for k, _, v in (line.strip().partition("=") for line in f)
                    if k.startswith("CONFIG_")
                }
        except OSError:
            continue
    return None


# A function each option adds to its module: present in /proc/kallsyms once it is loaded.
ONDEMAND_SYMBOLS = {
    "CONFIG_CACHEFILES_ONDEMAND": "cachefiles_ondemand_daemon_read",
    "CONFIG_EROFS_FS_ONDEMAND": "erofs_fscache_register_fs",
}


def loaded_options(kallsyms: str = "/proc/kallsyms") -> set[str]:
    """The ondemand options the modules in memory were built with. A Debian user who
    rebuilt `cachefiles` and `erofs` (docs/operations.md) has them while /boot's config
    still says the kernel does not."""
    wanted = {sym: opt for opt, sym in ONDEMAND_SYMBOLS.items()}
    found: set[str] = set()
    try:
        with open(kallsyms) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in wanted:
                    found.add(wanted[parts[2]])
    except OSError:
        pass
    return found


def _pre_content_events() -> str | None:
    try:
        os.close(
            syscalls.fanotify_init(fanotify.FAN_CLASS_PRE_CONTENT | fanotify.FAN_CLOEXEC, os.O_RDWR)
        )
        return None
    except OSError as e:
        return f"fanotify pre-content groups: {e.strerror} (needs root and Linux 6.14+)"


def probe() -> Report:
    root = os.geteuid() == 0
    config = kernel_config()
    with open("/proc/filesystems") as f:
        has_erofs = any(line.split()[-1] == "erofs" for line in f if line.strip())
    loaded = loaded_options()
    out = []
    for name in ("fanotify", "cachefiles"):
        missing = [] if root else ["run as root"]
        if config is not None:
            missing += [
                f"{opt}=y (kernel config)"
                for opt in NEEDS[name]
                if config.get(opt) not in ("y", "m") and opt not in loaded
            ]
        if name == "fanotify":
            if root and (problem := _pre_content_events()):
                missing.append(problem)
            if not has_erofs and not any("EROFS_FS=" in m for m in missing):
                missing.append("the erofs filesystem (modprobe erofs)")
        else:
            if not os.path.exists("/dev/cachefiles"):
                missing.append("/dev/cachefiles (modprobe cachefiles)")
        out.append(Backend(name, not missing, tuple(dict.fromkeys(missing))))
    out.append(Backend("materialize", True))
    return Report(platform.release(), root, tuple(out))
