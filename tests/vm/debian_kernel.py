"""A stock Debian kernel for the tests this machine's own kernel cannot run, with the
`cachefiles` and `erofs` modules rebuilt with their ondemand options (no Debian kernel
ships `CONFIG_CACHEFILES_ONDEMAND` or `CONFIG_EROFS_FS_ONDEMAND`; both are options inside
those two modules, so they are rebuilt out of tree, as docs/operations.md tells a Debian
user to).

Everything comes from the Debian archive this machine's apt already reaches: the kernel
image that `linux-image-amd64` names, its headers, and `linux-source-X.Y` of the same
version. Downloads and builds are kept in a cache directory and reused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The source directories the rebuilt modules need (fs/netfs and fs/fscache for headers).
SOURCE_DIRS = ("fs/cachefiles", "fs/erofs", "fs/fscache", "fs/netfs")
ONDEMAND = {
    "CONFIG_CACHEFILES": "m",
    "CONFIG_CACHEFILES_ONDEMAND": "y",
    "CONFIG_EROFS_FS": "m",
    "CONFIG_EROFS_FS_ONDEMAND": "y",
}


class KernelUnavailable(RuntimeError):
    """The Debian kernel or the tools to build its modules cannot be had here; the message
    says what is missing."""


@dataclass(frozen=True)
class DebianKernel:
    release: str  # e.g. "6.1.0-50-amd64", what `uname -r` prints in the VM
    version: str  # the Debian package version, e.g. "6.1.176-1"
    vmlinuz: Path
    modules: Path  # lib/modules/<release>
    rebuilt: dict[str, Path]  # module name -> the .ko built with the ondemand options


def _run(argv: list[str], cwd: Path | None = None, what: str = "") -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as e:
        raise KernelUnavailable(f"{argv[0]} is not installed ({what or e})") from e
    if proc.returncode:
        raise KernelUnavailable(
            f"{' '.join(argv)} failed ({what}): {(proc.stderr or proc.stdout)[-2000:]}"
        )
    return proc.stdout


def _depends(package: str) -> str:
    out = _run(["apt-cache", "depends", package], what=f"which kernel {package} names")
    for line in out.splitlines():
        m = re.match(r"\s*Depends: (\S+)", line)
        if m:
            return m.group(1)
    raise KernelUnavailable(f"apt-cache names no package behind {package}")


def _candidate(package: str) -> str:
    out = _run(["apt-cache", "policy", package], what=f"the version of {package}")
    m = re.search(r"Candidate: (\S+)", out)
    if not m or m.group(1) == "(none)":
        raise KernelUnavailable(f"the Debian archive here has no {package}")
    return m.group(1)


def fetch(cache: Path) -> DebianKernel:
    """The kernel `linux-image-amd64` names, downloaded, unpacked and its two modules rebuilt
    (about 220 MB of downloads and 15 s of compiling the first time; then from `cache`)."""
    image = _depends("linux-image-amd64")  # linux-image-6.1.0-50-amd64
    release = image.removeprefix("linux-image-")
    version = _candidate(image)
    series = ".".join(version.split(".")[:2])  # 6.1
    packages = {
        image: version,
        f"linux-headers-{release}": version,
        f"linux-headers-{release.rsplit('-', 1)[0]}-common": version,
        f"linux-kbuild-{series}": _candidate(f"linux-kbuild-{series}"),
        f"linux-source-{series}": _candidate(f"linux-source-{series}"),
    }
    if packages[f"linux-source-{series}"] != version:
        raise KernelUnavailable(
            f"linux-source-{series} is {packages[f'linux-source-{series}']} but the kernel is"
            f" {version}: modules built from it would not load"
        )
    top = cache / f"{release}_{version}"
    done = top / "built"
    root = top / "root"
    src = root / "usr/src" / f"linux-source-{series}"
    rebuilt = {
        "cachefiles": src / "fs/cachefiles/cachefiles.ko",
        "erofs": src / "fs/erofs/erofs.ko",
    }
    kernel = DebianKernel(
        release,
        version,
        root / "boot" / f"vmlinuz-{release}",
        root / "lib/modules" / release,
        rebuilt,
    )
    if done.exists():
        return kernel
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)

    def deb(package: str) -> list[Path]:
        # Named <package>_<version, ':' as %3a>_<arch>.deb; other versions may lie beside.
        return list(debs.glob(f"{package}_{packages[package].replace(':', '%3a')}_*.deb"))

    wanted = [f"{p}={v}" for p, v in packages.items() if not deb(p)]
    if wanted:
        _run(["apt-get", "download", *wanted], cwd=debs, what="downloading the kernel")
    shutil.rmtree(top, ignore_errors=True)
    root.mkdir(parents=True)
    for p in packages:
        (found,) = deb(p)
        _run(["dpkg-deb", "-x", str(found), str(root)], what=f"unpacking {found.name}")
    _run(
        [
            "tar",
            "-xJf",
            str(root / "usr/src" / f"linux-source-{series}.tar.xz"),
            "-C",
            str(root / "usr/src"),
            *(f"linux-source-{series}/{d}" for d in SOURCE_DIRS),
        ],
        what="unpacking the kernel source",
    )
    (root / "usr/src" / f"linux-source-{series}.tar.xz").unlink()
    headers = root / "usr/src" / f"linux-headers-{release}"
    # The headers' Makefile includes the common headers by their installed, absolute path.
    common = root / "usr/src" / f"linux-headers-{release.rsplit('-', 1)[0]}-common"
    (headers / "Makefile").write_text(f"include {common}/Makefile\n")
    flags = " ".join(f"-D{k}" for k, v in ONDEMAND.items() if v == "y")
    for d in ("fs/cachefiles", "fs/erofs"):
        _run(
            [
                "make",
                f"-j{os.cpu_count() or 1}",
                "-C",
                str(headers),
                f"M={src / d}",
                "modules",
                *(f"{k}={v}" for k, v in ONDEMAND.items()),
                # The options are tested by #ifdef inside the modules' C files too.
                f"KCFLAGS={flags}",
            ],
            what=f"building {d} with the ondemand options",
        )
    for name, ko in rebuilt.items():
        if not ko.exists():
            raise KernelUnavailable(f"building {name} made no {ko}")
    missing = [
        o for o in ("fs/cachefiles/ondemand.o", "fs/erofs/fscache.o") if not (src / o).exists()
    ]
    if missing:
        raise KernelUnavailable(f"the rebuilt modules lack {missing}: the options did not take")
    done.touch()
    return kernel
