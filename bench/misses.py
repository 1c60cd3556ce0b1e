"""How long Nix waits for a narinfo answer from the gateway, next to a plain HTTP cache.

    .venv/bin/python bench/misses.py [--requests 400]

A seed node publishes one path; a client node (policy 1-of-1) has the seed and a
second peer connected. Narinfo latency, p50 and p99, one request at a time and 25 at
once (Nix's http-connections), for:
  miss            paths nobody holds, every peer healthy
  miss, hung peer the same with the second peer frozen (SIGSTOP: connected, never answers)
  hit             the published path (claims from the seed, checked by the policy)
Baseline in the same run: `python -m http.server` serving a file cache's narinfos
(a miss is its 404, a hit its file). Targets: misses p99 <= 5 ms, hits p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.httpdir import serve
from tests.p2p.nodes import NodeProc, keys, policy

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
SP = "/nix/store/" + "7" * 32 + "-bench-hit-1.0"


def _get(url: str) -> float:
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
    except urllib.error.HTTPError as e:
        e.read()
        if e.code != 404:
            raise
    return time.perf_counter() - t


def _misses(n: int, rnd: random.Random) -> list[str]:
    return ["".join(rnd.choice(NIX32) for _ in range(32)) for _ in range(n)]


def measure(base: str, hashes: list[str], parallel: int) -> tuple[float, float]:
    urls = [f"{base}/{h}.narinfo" for h in hashes]
    if parallel == 1:
        times = [_get(u) for u in urls]
    else:
        with ThreadPoolExecutor(parallel) as pool:
            times = list(pool.map(_get, urls))
    q = statistics.quantiles(times, n=100)
    return q[49] * 1000, q[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=400, help="requests per figure")
    args = ap.parse_args()
    rnd = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-miss-") as tmp_:
        tmp = Path(tmp_)
        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        seed = NodeProc(tmp, "seed").start().wait_ready()
        other = NodeProc(tmp, "other").start().wait_ready()
        client = NodeProc(tmp, "client", bootstrap=[seed.addr, other.addr], policy=pol)
        client.start().wait_ready()
        try:
            src = tmp / "src"
            src.mkdir()
            (src / "data").write_bytes(rnd.randbytes(200_000))
            seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
            hit = SP.split("/")[-1][:32]
            gw = client.gateway_url
            assert _get(f"{gw}/{hit}.narinfo") >= 0  # warm: the manifest is fetched once
            cache = tmp / "cache"
            cache.mkdir()
            with urllib.request.urlopen(f"{gw}/{hit}.narinfo") as r:
                (cache / f"{hit}.narinfo").write_bytes(r.read())
            rows: list[tuple[str, str, int, float, float]] = []
            with serve(cache) as plain:
                for parallel in (1, 25):
                    misses = _misses(args.requests, rnd)
                    rows.append(("miss", "ferry", parallel, *measure(gw, misses, parallel)))
                    rows.append(
                        ("miss", "http.server", parallel, *measure(plain, misses, parallel))
                    )
                    hits = [hit] * args.requests
                    rows.append(("hit", "ferry", parallel, *measure(gw, hits, parallel)))
                    rows.append(("hit", "http.server", parallel, *measure(plain, hits, parallel)))
                assert other.proc is not None
                other.proc.send_signal(signal.SIGSTOP)
                try:
                    for parallel in (1, 25):
                        misses = _misses(args.requests, rnd)
                        rows.append(
                            ("miss, hung peer", "ferry", parallel, *measure(gw, misses, parallel))
                        )
                        rows.append(
                            (
                                "miss, hung peer",
                                "http.server",
                                parallel,
                                *measure(plain, misses, parallel),
                            )
                        )
                finally:
                    other.proc.send_signal(signal.SIGCONT)
        finally:
            for n in (client, other, seed):
                n.stop()
    print(f"{'case':<16} {'server':<12} {'at once':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for case, server, parallel, p50, p99 in rows:
        print(f"{case:<16} {server:<12} {parallel:>7} {p50:8.2f} {p99:8.2f}")


if __name__ == "__main__":
    main()
