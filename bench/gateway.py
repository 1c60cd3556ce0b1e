"""The gateway as Nix meets it, next to a plain binary cache, in the same run.

    .venv/bin/python bench/gateway.py [--section all|substitute|misses]
        [--source /usr/bin] [--extra /usr/lib/python3.11] [--rounds 2] [--requests 400]

substitute: Nix 2.8 builds a three-path closure in a chroot store (`bin` copies
--source, `lib` copies --extra, `top` refers to both), at least 200 MB. Then, in
interleaved rounds, `nix-store --realise` fills a fresh chroot store from:
  ferry     the gateway of a fresh client node (empty store, policy 1-of-1) whose only
            peer is a seed node that published the closure: every byte crosses libp2p
  http+xz   `nix copy --to file://...?compression=xz` served by `python -m http.server`
            (the usual self-hosted cache; compressing it is set-up, not timed)

misses: how long Nix waits for a narinfo. A seed node publishes one path; a client
node (policy 1-of-1) has the seed and a second peer connected. curl (libcurl, as Nix
uses it: keep-alive connections) asks, one request at a time and 25 at once (Nix's
http-connections), and reports each request's time; p50 and p99 for:
  miss            paths nobody holds, every peer healthy
  miss, hung peer the same with the second peer frozen (SIGSTOP: connected, never answers)
  hit             the published path (claims from the seed, checked by the policy)
Baseline: `python -m http.server` serving a file cache's narinfos (a miss is its 404,
a hit its file). Targets: misses p99 <= 5 ms, hits p99 <= 50 ms.

Both on 127.0.0.1 of this machine.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.substitution import file_cache, nix, rounds
from store import nixconf
from tests.conftest import NIX_MK
from tests.httpdir import serve
from tests.p2p.nodes import NodeProc, keys, policy

NIX_EXPR = (
    """
{ source, extra }:
let"""
    + NIX_MK
    + """
  bin = mk "bench-bin-1.0" "mkdir $out; cp -r ${source}/. $out/ 2>/dev/null; chmod -R u+w $out; true";
  lib = mk "bench-lib-1.0" "mkdir $out; cp -r ${extra}/. $out/ 2>/dev/null; chmod -R u+w $out; true";
in mk "bench-top-1.0" "mkdir $out; echo ${bin} > $out/bin; echo ${lib} > $out/lib"
"""
)


def du(path: Path) -> int:
    return int(
        subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0]
    )


def realise(env: dict[str, str], dest: Path, top: str, url: str, key: str) -> float:
    t = time.perf_counter()
    nix(
        env,
        "nix-store",
        "--store",
        str(dest),
        "--realise",
        top,
        "--option",
        "substituters",
        url,
        "--option",
        "trusted-public-keys",
        key,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    )
    return time.perf_counter() - t


def substitute(args: argparse.Namespace) -> None:
    if shutil.which("nix-store") is None:
        sys.exit("needs Nix (Debian: nix-bin); `./run test` installs it when run as root")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-gw-") as tmp_:
        tmp = Path(tmp_)
        env = {**nixconf.environ(tmp), "HOME": str(tmp)}
        store = tmp / "store"
        (tmp / "closure.nix").write_text(NIX_EXPR)
        print("building the closure with Nix...", file=sys.stderr)
        top = nix(
            env,
            "nix-build",
            "--store",
            str(store),
            str(tmp / "closure.nix"),
            "--argstr",
            "source",
            args.source,
            "--argstr",
            "extra",
            args.extra,
            "--no-out-link",
            "--option",
            "extra-sandbox-paths",
            f"{args.source} {args.extra}",
        ).strip()
        paths = nix(env, "nix-store", "--store", str(store), "-qR", top).split()
        nar_bytes = sum(
            int(nix(env, "nix-store", "--store", str(store), "-q", "--size", p)) for p in paths
        )
        if nar_bytes < 200e6:
            print(
                f"warning: the closure is only {nar_bytes / 1e6:.0f} MB; pick a bigger --source",
                file=sys.stderr,
            )

        cache, plain_key = file_cache(env, tmp, store, top, "xz")
        xz_bytes = du(cache / "nar")

        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        seed = NodeProc(tmp, "seed", timeout=10).start().wait_ready()
        try:
            for p in paths:
                seed.json("publish", p, "--store", str(store), "--key", str(k["builder"][0]))
            times = rounds(
                tmp,
                seed,
                pol,
                cache,
                plain_key,
                args.rounds,
                lambda dest, url, key: realise(env, dest, top, url, key),
                "http+xz",
            )
        finally:
            seed.stop()
    print(
        f"closure: {len(paths)} paths, {nar_bytes / 1e6:.1f} MB of NAR ({args.source}, {args.extra}); "
        f"xz NARs {xz_bytes / 1e6:.1f} MB"
    )
    for label, ts in times.times.items():
        runs = ", ".join(f"{t:.1f}" for t in ts)
        print(
            f"  {label:<8} best {min(ts):6.1f} s  {nar_bytes / min(ts) / 1e6:6.1f} MB/s of NAR   (runs: {runs})"
        )
    print(f"  ferry / http+xz time: {min(times.times['ferry']) / min(times.times['http+xz']):.2f}")
    print(times.report())


NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
HIT_PATH = "/nix/store/" + "7" * 32 + "-bench-hit-1.0"


def curl_times(base: str, hashes: list[str], parallel: int, tmp: Path) -> list[float]:
    """Each request's seconds, as curl measured it (`--parallel` reuses connections)."""
    config = tmp / "curl.conf"
    config.write_text(
        "".join(f'url = "{base}/{h}.narinfo"\noutput = "/dev/null"\n' for h in hashes)
    )
    proc = subprocess.run(
        [
            "curl",
            "--silent",
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            str(parallel),
            "--write-out",
            "%{http_code} %{time_total}\n",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [line.split() for line in proc.stdout.splitlines()]
    bad = [code for code, _ in rows if code not in ("200", "404")]
    if proc.returncode or bad or len(rows) != len(hashes):
        sys.exit(f"curl failed ({proc.returncode}, answers {bad[:5]}): {proc.stderr[-2000:]}")
    return [float(t) for _, t in rows]


def _quantiles(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=100)
    return q[49] * 1000, q[98] * 1000


def misses(args: argparse.Namespace) -> None:
    if shutil.which("curl") is None:
        sys.exit("needs curl (Debian: curl)")
    rnd = random.Random(7)

    def unknown(n: int) -> list[str]:
        return ["".join(rnd.choice(NIX32) for _ in range(32)) for _ in range(n)]

    rows: list[tuple[str, str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-miss-") as tmp_:
        tmp = Path(tmp_)
        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        seed = NodeProc(tmp, "seed").start()
        other = NodeProc(tmp, "other").start()
        seed.wait_ready()
        other.wait_ready()
        client = NodeProc(tmp, "client", bootstrap=[seed.addr, other.addr], policy=pol)
        client.start().wait_ready()
        try:
            src = tmp / "src"
            src.mkdir()
            (src / "data").write_bytes(rnd.randbytes(200_000))
            seed.json("publish", str(src), "--store-path", HIT_PATH, "--key", str(k["builder"][0]))
            hit = HIT_PATH.split("/")[-1][:32]
            gw = client.gateway_url
            cache = tmp / "cache"
            cache.mkdir()
            with urllib.request.urlopen(f"{gw}/{hit}.narinfo") as r:
                (cache / f"{hit}.narinfo").write_bytes(r.read())
            with serve(cache) as plain:

                def both(case: str, hashes: list[str], parallel: int) -> None:
                    for server, base in (("ferry", gw), ("http.server", plain)):
                        times = curl_times(base, hashes, parallel, tmp)
                        rows.append((case, server, parallel, *_quantiles(times)))

                for parallel in (1, 25):
                    both("miss", unknown(args.requests), parallel)
                    both("hit", [hit] * args.requests, parallel)
                assert other.proc is not None
                other.proc.send_signal(signal.SIGSTOP)
                try:
                    for parallel in (1, 25):
                        both("miss, hung peer", unknown(args.requests), parallel)
                finally:
                    other.proc.send_signal(signal.SIGCONT)
        finally:
            for n in (client, other, seed):
                n.stop()
    print(f"narinfo latency, {args.requests} requests per row (curl, keep-alive)")
    print(f"  {'case':<16} {'server':<12} {'at once':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for case, server, parallel, p50, p99 in rows:
        print(f"  {case:<16} {server:<12} {parallel:>7} {p50:8.2f} {p99:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--section", choices=("all", "substitute", "misses"), default="all")
    ap.add_argument(
        "--source", default="/usr/bin", help="directory copied into the big path (default /usr/bin)"
    )
    ap.add_argument(
        "--extra",
        default=f"/usr/lib/python3.{sys.version_info.minor}",
        help="directory copied into the second path",
    )
    ap.add_argument("--rounds", type=int, default=2, help="substitute: rounds")
    ap.add_argument("--requests", type=int, default=400, help="misses: requests per figure")
    args = ap.parse_args()
    if args.section in ("all", "misses"):
        misses(args)
    if args.section in ("all", "substitute"):
        substitute(args)


if __name__ == "__main__":
    main()
