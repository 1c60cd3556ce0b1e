#!/usr/bin/env python3
"""Ingest throughput beside what a binary cache spends preparing a NAR, and what two
versions of a real package cost on disk.

    .venv/bin/python bench/ingest.py [--tree DIR] [--rounds N] [--skip-wheels]

Part 1, throughput. Without --tree it stages two >= 520 MB trees of real files in a
temp dir, copying files in name order with their relative paths until the size is
reached: "large files" from /usr/lib (libraries, firmware, binaries: hundreds of
files, as in big store paths) and "small files" from /usr/share (docs, locales, data:
tens of thousands of files, where per-file costs dominate). Each round runs, in turn:
  baseline      nix-store --dump DIR | zstd -3 > /dev/null
  ferry ingest  a fresh local store: manifest, every new chunk written to a slab and
                synced, index batches committed, the path recorded (in-process, as the
                daemon will run it; store open and close included)
and the table shows medians and the ratio ferry/baseline from the same run. The
page cache is warm for both (the tree is read once before the rounds).

Part 2, disk. Two numpy wheels (2.1.0 and 2.1.1, CPython 3.11, manylinux x86_64) are
downloaded from PyPI (cached in bench/.cache), unpacked, and published into one
store: logical bytes (both trees' file data) against unique bytes and disk bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.local.store import LocalStore
from store import build, dump, nar
from store.path import StorePath

MB = 1e6
TREES = {"large files": "/usr/lib", "small files": "/usr/share"}
WHEELS = ("2.1.0", "2.1.1")
CACHE = Path(__file__).resolve().parent / ".cache"


def tree_bytes(root: Path) -> int:
    return sum(n.size for n, _ in dump.walk(str(root)) if isinstance(n, nar.Regular))


def stage_tree(dest: Path, src: str, target: int) -> bool:
    """Copy files from `src`, in name order, keeping their relative paths, until
    `target` bytes of regular files (symlinks come along; special files do not).
    False if `src` has fewer bytes than that."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(os.path.relpath(dirpath, src))
        for name in sorted(filenames):
            if total >= target:
                return True
            p = os.path.join(dirpath, name)
            out = dest / rel / name
            try:
                if os.path.islink(p):
                    out.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.readlink(p), out)
                elif os.path.isfile(p):
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, out)
                    total += out.stat().st_size
            except OSError:
                continue  # unreadable: leave it out
    return total >= target


def baseline(root: Path) -> float:
    t = time.perf_counter()
    subprocess.run(f"nix-store --dump '{root}' | zstd -3 -q > /dev/null", shell=True, check=True)
    return time.perf_counter() - t


def ferry_ingest(root: Path, data: Path) -> float:
    sp = StorePath("/nix/store", "0" * 32, "bench")
    t = time.perf_counter()
    with LocalStore(str(data)) as store, store.ingest() as ing:
        m = build.from_directory(str(root), sp, on_chunk=ing.add_chunk)
        ing.commit(m)
    elapsed = time.perf_counter() - t
    shutil.rmtree(data)
    return elapsed


def throughput(label: str, root: Path, rounds: int, work: Path) -> None:
    size = tree_bytes(root)
    files = sum(1 for n, _ in dump.walk(str(root)) if isinstance(n, nar.Regular))
    print(
        f"\n{label}: {root} ({size / MB:,.0f} MB of file data, {files:,} files); {os.cpu_count()} CPUs, "
        f"{rounds} rounds, medians"
    )
    baseline(root)  # warm the page cache
    base, ours = [], []
    for _ in range(rounds):
        base.append(baseline(root))
        ours.append(ferry_ingest(root, work / "data"))
    b, f = statistics.median(base), statistics.median(ours)
    print(f"{'contender':<44} {'s':>7} {'MB/s':>7} {'ratio':>6}")
    print(f"{'nix-store --dump | zstd -3 > /dev/null':<44} {b:7.2f} {size / MB / b:7.0f} {1:6.2f}")
    print(f"{'ferry ingest (new store, synced)':<44} {f:7.2f} {size / MB / f:7.0f} {b / f:6.2f}")
    print(f"  rounds, baseline: {' '.join(f'{x:.2f}' for x in base)}")
    print(f"  rounds, ferry:    {' '.join(f'{x:.2f}' for x in ours)}")


def fetch_wheel(version: str) -> Path:
    CACHE.mkdir(exist_ok=True)
    found = sorted(CACHE.glob(f"numpy-{version}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux2014_x86_64",
                "--dest",
                str(CACHE),
                f"numpy=={version}",
            ],
            check=True,
        )
        found = sorted(CACHE.glob(f"numpy-{version}-*.whl"))
    return found[0]


def wheels(work: Path) -> None:
    data = work / "wheels-store"
    print(f"\ntwo versions of a real package: numpy {' and '.join(WHEELS)} (wheels, unpacked)")
    rows = []
    with LocalStore(str(data)) as store:
        for n, version in enumerate(WHEELS):
            tree = work / f"numpy-{version}"
            with zipfile.ZipFile(fetch_wheel(version)) as z:
                z.extractall(tree)
            with store.ingest() as ing:
                m = build.from_directory(
                    str(tree),
                    StorePath("/nix/store", str(n) * 32, f"numpy-{version}"),
                    on_chunk=ing.add_chunk,
                )
                ing.commit(m)
            s = store.stats()
            rows.append((version, m.stats().file_bytes, ing.new_bytes, s))
    for version, file_bytes, new, _ in rows:
        print(
            f"  after numpy {version}: file data {file_bytes / MB:6.1f} MB, new chunk bytes {new / MB:6.1f} MB"
        )
    s = rows[-1][3]
    print(f"  logical (chunked file data of both) {s.chunk_bytes / MB:6.1f} MB")
    print(f"  unique chunk bytes                  {s.unique_bytes / MB:6.1f} MB")
    print(
        f"  slab bytes on disk                  {s.slab_disk_bytes / MB:6.1f} MB "
        f"(+ index {s.index_bytes / MB:.1f} MB)"
    )
    print(
        f"  disk / logical                      {(s.slab_disk_bytes + s.index_bytes) / s.chunk_bytes:6.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tree", type=Path, help="ingest this tree instead of staging two")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-wheels", action="store_true", help="skip part 2 (needs PyPI)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(
        prefix="ferry-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")
    ) as tmp:
        work = Path(tmp)
        if args.tree:
            throughput("tree", args.tree, args.rounds, work)
        for label, src in ({} if args.tree else TREES).items():
            root = work / label.replace(" ", "-")
            print(f"staging {label} from {src} ...", flush=True)
            if not stage_tree(root, src, 520 * 1000 * 1000):
                print(f"  {src} holds less than 520 MB of files: skipped (give --tree DIR)")
                continue
            throughput(label, root, args.rounds, work)
            shutil.rmtree(root)
        if not args.skip_wheels:
            wheels(work)


if __name__ == "__main__":
    main()
