#!/usr/bin/env python3
"""NAR writing and manifest building throughput, beside Nix on the same tree.

    .venv/bin/python bench/formats.py [--tree DIR] [--rounds N]

Without --tree it builds a tree of >= 300 MB in a temp dir: a copy of this Python's
standard library (many small files) plus generated files of every chunk tier. Each
round runs every contender once, in turn, on a warm page cache; the table shows the
median and the ratio to `nix-store --dump DIR > /dev/null` of the same run.

Contenders:
  nix-store --dump        the baseline: Nix writing the NAR to /dev/null
  nix-hash --type sha256  Nix computing the NarHash (dump + SHA-256)
  ferry NAR write         store.dump.dump, bytes discarded
  ferry chunk+BLAKE3      read every file, cut into chunks, BLAKE3 each (no NarHash)
  ferry manifest (Nw)     store.build.from_directory: chunk+BLAKE3 and the NarHash,
                          with N BLAKE3 threads beside the NarHash thread (0: BLAKE3
                          on the caller's thread); the unmarked default first
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import build, dump, nar
from store.chunking import DEFAULT_POLICY, FileChunker
from store.path import StorePath

MB = 1e6


def make_tree(root: Path, target: int) -> None:
    shutil.copytree(
        sysconfig.get_paths()["stdlib"],
        root / "stdlib",
        symlinks=True,
        ignore=shutil.ignore_patterns("site-packages", "__pycache__"),
    )
    gen = root / "generated"
    gen.mkdir()
    # One file per chunk tier, then medium files until the target size.
    sizes = [100 * 1024 * 1024, 40 * 1024 * 1024, 8 * 1024 * 1024]
    i = 0
    while tree_bytes(root) < target:
        size = sizes[i] if i < len(sizes) else 2 * 1024 * 1024 + i
        with open(gen / f"blob{i}", "wb") as f:
            f.write(os.urandom(size))
        i += 1


def tree_bytes(root: Path) -> int:
    return sum(n.size for n, _ in dump.walk(str(root)) if isinstance(n, nar.Regular))


def nix_dump(root: Path) -> None:
    subprocess.run(["nix-store", "--dump", str(root)], stdout=subprocess.DEVNULL, check=True)


def nix_hash(root: Path) -> None:
    subprocess.run(
        ["nix-hash", "--type", "sha256", str(root)], stdout=subprocess.DEVNULL, check=True
    )


def ferry_dump(root: Path) -> None:
    for _ in dump.dump(str(root)):
        pass


def ferry_chunk(root: Path) -> None:
    """The manifest builder's read + chunk + BLAKE3 stage alone: its chunker and its
    BLAKE3 thread pool, one thread per CPU since no NarHash runs beside it."""
    digests = build._Digests(os.cpu_count() or 1, None)
    try:
        for node, fspath in dump.walk(str(root)):
            if isinstance(node, nar.Regular) and not DEFAULT_POLICY.is_inline(node.size):
                chunker = FileChunker(node.size)
                dest: list[bytes] = []
                for data in dump.read_file(fspath, node.size):
                    for c in chunker.feed(data):
                        digests.add(c, dest)
                last = chunker.finish()
                if last:
                    digests.add(last, dest)
        digests.drain()
    finally:
        digests.close()


def ferry_manifest(workers: int | None):
    def run(root: Path) -> None:
        build.from_directory(str(root), StorePath("/nix/store", "0" * 32, "bench"), workers=workers)

    return run


CONTENDERS = [
    ("nix-store --dump", nix_dump),
    ("nix-hash --type sha256", nix_hash),
    ("ferry NAR write", ferry_dump),
    ("ferry chunk+BLAKE3", ferry_chunk),
    (f"ferry manifest ({build.default_workers()}w)", ferry_manifest(None)),
    (
        f"ferry manifest ({build.default_workers() + 1}w)",
        ferry_manifest(build.default_workers() + 1),
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tree", type=Path, help="benchmark this tree instead of generating one")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=320, help="size of the generated tree")
    args = ap.parse_args()
    if shutil.which("nix-store") is None:
        sys.exit(
            "bench/formats.py: nix-store is needed as the baseline (Debian: apt-get install nix-bin)"
        )
    with tempfile.TemporaryDirectory(prefix="ferry-bench-", dir="/var/tmp") as tmp:
        root = args.tree or Path(tmp) / "tree"
        if not args.tree:
            make_tree(root, args.size_mb * 1_000_000)
        nar_size = sum(len(p) for p in dump.dump(str(root)))
        files = sum(1 for n, _ in dump.walk(str(root)) if isinstance(n, nar.Regular))
        print(
            f"tree: {root}  NAR {nar_size / MB:,.0f} MB, {files:,} files; {args.rounds} rounds, "
            f"{os.cpu_count()} CPUs\n"
        )
        nix_dump(root)  # warm the page cache
        times: dict[str, list[float]] = {name: [] for name, _ in CONTENDERS}
        for _ in range(args.rounds):
            for name, fn in CONTENDERS:
                t = time.perf_counter()
                fn(root)
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["nix-store --dump"])
    nixhash = statistics.median(times["nix-hash --type sha256"])
    print(f"{'':24} {'median s':>9} {'MB/s':>8} {'vs nix-store --dump':>20} {'vs nix-hash':>12}")
    for name, _ in CONTENDERS:
        med = statistics.median(times[name])
        print(
            f"{name:24} {med:9.3f} {nar_size / med / MB:8,.0f} {base / med:19.2f}x {nixhash / med:11.2f}x"
        )
    print("\nA manifest includes the NarHash (SHA-256 over the whole NAR, sequential), so its")
    print("like-for-like Nix baseline is nix-hash; nix-store --dump computes no hash at all.")


if __name__ == "__main__":
    main()
