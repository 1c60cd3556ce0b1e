"""A closure of many small paths as Nix substitutes it: ferry's gateway beside a plain
binary cache, in the same run.

    .venv/bin/python bench/closure.py [--paths 2000] [--big 6] [--rounds 2] [--seed 7]

The closure: --paths leaf paths (named as packages are) of realistic sizes (a few files each; most under 1 MB,
sizes spread log-uniformly from 1 KB; --big of them tens of MB; half the files text-like,
half binary-like, so they compress as packages do), added to a chroot store with one
`nix-store --add`, and a top path (`builtins.toFile`) that refers to all of them.

Set-up, not timed: a seed node publishes every path with a builder's claim (in process,
into its store, before it starts: `ferry publish` is one process per path); the same
paths go into a file cache with `nix copy --to file://...?compression=zstd`.

Timed, in interleaved rounds, each into a fresh chroot store, with the same Nix command
(`nix copy --from URL TOP`, Nix 2.8):
  ferry        the gateway of a fresh client node (empty store, policy 1-of-1) whose only
               peer is the seed: every narinfo is decided and every byte crosses libp2p
  http+zstd    `python -m http.server` serving the zstd file cache
Target: ferry's wall time <= the HTTP cache's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.substitution import file_cache, nix, rounds
from node.local.store import LocalStore
from store import nixconf
from store.build import from_directory
from store.hash import Hash
from store.path import StorePath
from tests.p2p.nodes import NodeProc, keys, policy
from trust import keyfile
from trust.claim import sign_manifest

KB, MB = 1000, 1000 * 1000
WORDS = b"lib include const return static struct void #define nix store path function the of and value".split()


def content(rnd: random.Random, size: int) -> bytes:
    """Text-like (words and numbers: zstd ~4x) or binary-like (random with zero runs:
    ~1.5x), as a package's files are."""
    if rnd.random() < 0.5:
        out = bytearray()
        while len(out) < size:
            out += b" ".join(rnd.choices(WORDS, k=12)) + b" %d\n" % rnd.getrandbits(24)
        return bytes(out[:size])
    out = bytearray()
    while len(out) < size:
        n = rnd.randint(64, 4096)
        out += rnd.randbytes(n) if rnd.random() < 0.6 else bytes(n)
    return bytes(out[:size])


def make_leaves(root: Path, count: int, big: int, rnd: random.Random) -> int:
    """`count` directories under root; returns their total file bytes."""
    total = 0
    bigs = set(rnd.sample(range(count), big))
    syllables = [
        "lib",
        "x",
        "gtk",
        "py",
        "perl",
        "gnu",
        "core",
        "utils",
        "ssl",
        "z",
        "font",
        "data",
    ]
    for i in range(count):
        # Names as a closure has them: mostly distinct packages, each with a version.
        package = "".join(rnd.choices(syllables, k=3)) + str(i)
        d = root / f"{package}-{rnd.randint(0, 9)}.{rnd.randint(0, 30)}"
        (d / "lib").mkdir(parents=True)
        size = (
            rnd.randint(10 * MB, 40 * MB)
            if i in bigs
            else int(math.exp(rnd.uniform(math.log(KB), math.log(1 * MB))))
        )
        files = rnd.randint(1, 6)
        for f in range(files):
            part = size // files
            (d / "lib" / f"file-{f}").write_bytes(content(rnd, part))
            total += part
    return total


def copy_from(env: dict[str, str], dest: Path, top: str, url: str, key: str) -> float:
    t = time.perf_counter()
    nix(
        env,
        "nix",
        "copy",
        "--from",
        url,
        "--to",
        str(dest),
        top,
        "--option",
        "trusted-public-keys",
        key,
    )
    return time.perf_counter() - t


def publish_all(
    data_dir: Path, store: Path, paths: list[str], secret: Path, env: dict[str, str]
) -> None:
    """Every path into the seed's store, signed, as `ferry publish` would (the seed is
    not running yet): one `nix path-info` for all, then manifests built in process."""
    infos = json.loads(nix(env, "nix", "path-info", "--json", "--store", str(store), *paths))
    key = keyfile.load_secret(str(secret))
    with LocalStore(str(data_dir)) as local:
        for info in infos:
            sp = StorePath.decode(info["path"], "/nix/store")
            refs = tuple(StorePath.decode(r, "/nix/store") for r in info.get("references", []))
            with local.ingest() as ingest:
                manifest = from_directory(
                    str(store) + info["path"], sp, references=refs, on_chunk=ingest.add_chunk
                )
                if manifest.nar_hash != Hash.decode(info["narHash"]):
                    sys.exit(
                        f"{sp}: ferry's NarHash {manifest.nar_hash} != Nix's {info['narHash']}"
                    )
                ingest.commit(manifest, claims=[sign_manifest(manifest, key)], root=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--paths", type=int, default=2000, help="leaf paths (default 2000)")
    ap.add_argument("--big", type=int, default=6, help="of which tens of MB (default 6)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each (default 2)")
    ap.add_argument("--seed", type=int, default=7, help="random seed for the contents")
    args = ap.parse_args()
    if shutil.which("nix-store") is None:
        sys.exit("needs Nix (Debian: nix-bin); `./run test` installs it when run as root")
    if args.paths < 1 or args.rounds < 1:
        sys.exit("--paths and --rounds must be at least 1")
    if not 0 <= args.big <= args.paths:
        sys.exit("--big must be between 0 and --paths")
    rnd = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-closure-") as tmp_:
        tmp = Path(tmp_)
        env = {**nixconf.environ(tmp), "HOME": str(tmp)}
        store = tmp / "store"
        print(f"making {args.paths} paths...", file=sys.stderr)
        leaves_dir = tmp / "leaves"
        file_bytes = make_leaves(leaves_dir, args.paths, args.big, rnd)
        leaves = nix(
            env,
            "nix-store",
            "--store",
            str(store),
            "--add",
            *sorted(str(p) for p in leaves_dir.iterdir()),
        ).split()
        shutil.rmtree(leaves_dir)
        expr = (
            'builtins.toFile "bench-closure-top" (builtins.concatStringsSep "\\n" (map '
            f"builtins.storePath (builtins.fromJSON (builtins.readFile {tmp / 'leaves.json'}))))"
        )
        (tmp / "leaves.json").write_text(json.dumps(leaves))
        top = json.loads(
            nix(
                env,
                "nix-instantiate",
                "--store",
                str(store),
                "--read-write-mode",
                "--eval",
                "--json",
                "-E",
                expr,
            )
        )
        paths = [top, *leaves]
        infos = json.loads(nix(env, "nix", "path-info", "--json", "--store", str(store), *paths))
        nar_bytes = sum(i["narSize"] for i in infos)
        small = sum(1 for i in infos if i["narSize"] < MB)

        cache, plain_key = file_cache(env, tmp, store, top, "zstd")
        cache_bytes = sum(f.stat().st_size for f in (cache / "nar").iterdir())

        print("publishing into the seed's store (set-up, not timed)...", file=sys.stderr)
        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        seed = NodeProc(tmp, "seed", timeout=10)
        publish_all(seed.data_dir, store, paths, k["builder"][0], env)
        seed.start().wait_ready()
        try:
            times = rounds(
                tmp,
                seed,
                pol,
                cache,
                plain_key,
                args.rounds,
                lambda dest, url, key: copy_from(env, dest, top, url, key),
                "http+zstd",
            )
        finally:
            seed.stop()
    print(
        f"closure: {len(paths)} paths ({small} under 1 MB of NAR), {nar_bytes / 1e6:.1f} MB of NAR "
        f"({file_bytes / 1e6:.1f} MB of files); zstd NARs {cache_bytes / 1e6:.1f} MB"
    )
    print("nix copy --from URL (Nix 2.8), fresh chroot store each run:")
    for label, ts in times.times.items():
        runs = ", ".join(f"{t:.1f}" for t in ts)
        print(
            f"  {label:<10} best {min(ts):6.1f} s  {len(paths) / min(ts):6.0f} paths/s   (runs: {runs})"
        )
    best = {label: min(ts) for label, ts in times.times.items()}
    print(f"  ferry / http+zstd time: {best['ferry'] / best['http+zstd']:.2f}")
    print(times.report())


if __name__ == "__main__":
    main()
