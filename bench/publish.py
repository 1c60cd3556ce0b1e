#!/usr/bin/env python3
"""Publishing a whole Nix store through a running node, beside `nix copy` to a zstd
binary cache of the same paths, in the same run.

    .venv/bin/python bench/publish.py [--paths 2000] [--rounds 3]

It builds a synthetic store: --paths store paths (default 2,000) added to a chroot Nix
store with `nix-store --add`, each a directory of real files copied from /usr/share and
/usr/lib (so compressibility is realistic), sized like a distribution's paths: most
under 1 MB (log-normal, median about 60 KB), a few of several MB. Each round, in turn:

  ferry     a fresh node (started beforehand, not timed) publishes the whole store,
            signed with a builder key: `ferry publish --all --store ROOT --key K`
            (through the node: read from Nix's database, manifests, chunks written and
            synced, claims signed, the node announces them)
  nix copy  `nix copy --all --from ROOT --to file://CACHE?compression=zstd` (NARs
            compressed with zstd and written with their narinfos)

(which goes first alternates between rounds, and dirty pages are written out before
each), and prints paths/s and MB/s of NAR for each, the medians, and the ratio of
ferry's speed to nix copy's (the target is >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store import nixconf  # noqa: E402

FERRY = [sys.executable, "-c", "from node.cli import main; main()"]
SOURCES = ("/usr/share", "/usr/lib")


def source_files(limit: int) -> list[Path]:
    """Regular files from SOURCES, in name order, up to `limit` bytes in all."""
    files: list[Path] = []
    total = 0
    for src in SOURCES:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                try:
                    size = p.stat().st_size
                except OSError:
                    continue
                if not size or size > 8 << 20:
                    continue
                files.append(p)
                total += size
                if total >= limit:
                    return files
    return files


def stage(dest: Path, count: int, seed: int = 7) -> list[Path]:
    """`count` directories of real files, each of a log-normal target size."""
    dest.mkdir()
    rng = random.Random(seed)
    targets = [min(int(rng.lognormvariate(11.0, 1.6)), 16 << 20) + 200 for _ in range(count)]
    pool = source_files(int(sum(targets) * 1.1))
    it = iter(pool)
    dirs = []
    for i, target in enumerate(targets):
        d = dest / f"pkg{i:05d}-1.{i % 7}"
        d.mkdir()
        size = 0
        n = 0
        while size < target:
            try:
                src = next(it)
            except StopIteration:
                it = iter(pool)
                src = next(it)
            shutil.copyfile(src, d / f"f{n:03d}-{src.name}")
            size += src.stat().st_size
            n += 1
        dirs.append(d)
    return dirs


def run(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, env=env, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if r.returncode:
        raise SystemExit(f"{' '.join(map(str, argv[:6]))} failed:\n{r.stderr[-2000:]}")
    return r


def start_node(data: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    data.mkdir()
    proc = subprocess.Popen(
        [
            *FERRY,
            "node",
            "run",
            "--data-dir",
            str(data),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--no-dht",
            "--no-gateway",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(600):  # node.addr appears once the node accepts requests
        if (data / "node.addr").exists():
            return proc
        if proc.poll() is not None:
            raise SystemExit("the node did not start")
        time.sleep(0.1)
    raise SystemExit("the node did not start within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("nix-store") is None:
        raise SystemExit("needs Nix (Debian: nix-bin)")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-publish-") as tmp_:
        tmp = Path(tmp_)
        env = nixconf.environ(tmp / "nix-home")
        env["HOME"] = str(tmp / "nix-home")
        nix_root = tmp / "nixstore"
        print(f"staging {args.paths} paths ...", flush=True)
        dirs = stage(tmp / "src", args.paths)
        for i in range(0, len(dirs), 200):
            run(["nix-store", "--store", str(nix_root), "--add", *map(str, dirs[i : i + 200])], env)
        shutil.rmtree(tmp / "src")
        info = json.loads(
            run(
                [
                    "nix",
                    "--extra-experimental-features",
                    "nix-command",
                    "path-info",
                    "--json",
                    "--all",
                    "--store",
                    str(nix_root),
                ],
                env,
            ).stdout
        )
        sizes = sorted(int(i["narSize"]) for i in info)
        nar_bytes = sum(sizes)
        print(
            f"store: {len(sizes)} paths, {nar_bytes / 1e6:.1f} MB of NAR; median "
            f"{statistics.median(sizes) / 1e3:.0f} KB, {sum(s < 1e6 for s in sizes)} under 1 MB, "
            f"largest {sizes[-1] / 1e6:.1f} MB"
        )
        run([*FERRY, "trust", "keygen", "bench-builder", "-o", str(tmp / "bench-builder")], env)
        key = tmp / "bench-builder.secret"
        results: dict[str, list[float]] = {"ferry": [], "nix copy": []}

        def ferry_round(r: int) -> None:
            data = tmp / f"ferry-{r}"
            node = start_node(data, env)
            try:
                os.sync()  # neither side pays for the other's writeback
                t = time.perf_counter()
                out = run(
                    [
                        *FERRY,
                        "publish",
                        "--all",
                        "--store",
                        str(nix_root),
                        "--key",
                        str(key),
                        "--data-dir",
                        str(data),
                        "--json",
                    ],
                    env,
                )
                results["ferry"].append(time.perf_counter() - t)
                done = json.loads(out.stdout)
                assert len(done["published"]) == len(sizes), done["skipped"][:3]
            finally:
                node.terminate()
                node.wait(60)
            shutil.rmtree(data)

        def nix_round(r: int) -> None:
            cache = tmp / f"cache-{r}"
            os.sync()
            t = time.perf_counter()
            run(
                [
                    "nix",
                    "--extra-experimental-features",
                    "nix-command",
                    "copy",
                    "--all",
                    "--from",
                    str(nix_root),
                    "--to",
                    f"file://{cache}?compression=zstd",
                ],
                env,
            )
            results["nix copy"].append(time.perf_counter() - t)
            shutil.rmtree(cache)

        for r in range(args.rounds):
            # Alternate who goes first: the machine's state drifts over a run.
            for side in (ferry_round, nix_round) if r % 2 == 0 else (nix_round, ferry_round):
                side(r)
            print(
                f"round {r + 1}: ferry {results['ferry'][-1]:.2f} s, "
                f"nix copy {results['nix copy'][-1]:.2f} s",
                flush=True,
            )
        print(f"\n{'':<10} {'median s':>9} {'paths/s':>9} {'MB/s':>8}   rounds")
        for label, times in results.items():
            m = statistics.median(times)
            print(
                f"{label:<10} {m:9.2f} {len(sizes) / m:9.0f} {nar_bytes / 1e6 / m:8.1f}   "
                + ", ".join(f"{x:.2f}" for x in times)
            )
        ratio = statistics.median(results["nix copy"]) / statistics.median(results["ferry"])
        print(f"\nferry's speed / nix copy's: {ratio:.2f}x (target >= 1.0)")


if __name__ == "__main__":
    main()
