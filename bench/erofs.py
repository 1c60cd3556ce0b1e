"""EROFS metadata images: how fast ferry writes them and how big they are, next to
mkfs.erofs writing chunk-based metadata for the same tree in the same run.

    .venv/bin/python bench/erofs.py [--files 10000] [--rounds 3]

The tree: --files files (sizes from a fixed mix: many small, some of a few chunks, a
few large) in nested directories, plus symlinks. ferry: the manifest is built once (not
timed), then `write_image` from manifest + chunk places is timed. mkfs.erofs 1.5:
`mkfs.erofs --chunksize=65536 --blobdev=BLOB -T0 --all-root IMG DIR`, whose IMG is the
metadata image and BLOB the data; timed as a whole (it also copies the data out, so the
time is an upper bound; the size is what compares).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erofs.writer import Device, write_image
from node.local.image import entries_of
from store import build
from store.path import StorePath


def make_tree(root: Path, files: int) -> int:
    rnd = random.Random(1)
    total = 0
    for i in range(files):
        d = root / f"d{i % 97:02d}" / f"e{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        size = (
            rnd.choice([0, 80, 300, 1500, 3000, 9000, 30_000, 70_000, 200_000])
            if i % 500
            else 3_000_000
        )
        (d / f"file{i:05d}.dat").write_bytes(rnd.randbytes(size))
        total += size
        if i % 50 == 0:
            os.symlink(f"file{i:05d}.dat", d / f"link{i:05d}")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("mkfs.erofs") is None:
        sys.exit(
            "needs mkfs.erofs (Debian: erofs-utils); `./run test` installs it when run as root"
        )
    with tempfile.TemporaryDirectory(prefix="ferry-bench-erofs-") as tmp_:
        tmp = Path(tmp_)
        tree = tmp / "tree"
        tree.mkdir()
        data_bytes = make_tree(tree, args.files)
        slab_blocks = 0
        places: dict[bytes, tuple[int, int]] = {}

        def place(d: bytes, chunk: bytes | memoryview) -> None:
            nonlocal slab_blocks
            if d not in places:
                places[d] = (1, slab_blocks)
                slab_blocks += -(-len(chunk) // 4096)

        manifest = build.from_directory(
            str(tree), StorePath("/nix/store", "4" * 32, "bench-tree"), on_chunk=place
        )
        entries = entries_of(manifest, places.__getitem__)
        ours: list[float] = []
        theirs: list[float] = []
        image = b""
        for _ in range(args.rounds):
            t = time.perf_counter()
            image = write_image(entries, [Device(b"slab-000001", slab_blocks)])
            ours.append(time.perf_counter() - t)
            for f in (tmp / "mkfs.img", tmp / "mkfs.blob"):
                f.unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run(
                [
                    "mkfs.erofs",
                    "--chunksize=65536",
                    f"--blobdev={tmp / 'mkfs.blob'}",
                    "-T0",
                    "--all-root",
                    "-U00000000-0000-0000-0000-000000000000",
                    str(tmp / "mkfs.img"),
                    str(tree),
                ],
                check=True,
                capture_output=True,
            )
            theirs.append(time.perf_counter() - t)
        mkfs_size = (tmp / "mkfs.img").stat().st_size
    print(
        f"tree: {args.files:,} files, {len(manifest.entries):,} entries, {data_bytes / 1e6:.0f} MB of data"
    )
    print(
        f"  ferry write_image   best {min(ours) * 1e3:7.1f} ms  ({1 / min(ours):6.1f} images/s)   "
        f"metadata {len(image) / 1e6:6.2f} MB"
    )
    print(
        f"  mkfs.erofs (whole)  best {min(theirs) * 1e3:7.1f} ms                       "
        f"metadata {mkfs_size / 1e6:6.2f} MB"
    )
    print(f"  metadata size ferry / mkfs.erofs: {len(image) / mkfs_size:.2f}")


if __name__ == "__main__":
    main()
