"""What the benches in which Nix substitutes from ferry and from a plain binary cache
share: Nix commands that end the bench on failure, the signed file cache, and the
interleaved rounds (a fresh client node each round, then the cache)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.httpdir import serve
from tests.p2p.nodes import NodeProc

# Fills a fresh chroot store at `dest` from the binary cache at `url`, whose narinfos
# `key` signs; returns the seconds it took.
Timed = Callable[[Path, str, str], float]


def nix(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:4])}... failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def file_cache(
    env: dict[str, str], tmp: Path, store: Path, top: str, compression: str
) -> tuple[Path, str]:
    """`top`'s closure as a file cache signed by a Nix key of its own (set-up, not
    timed): the cache's directory and the key's public half."""
    sec, pub, cache = tmp / "plain.sec", tmp / "plain.pub", tmp / f"{compression}cache"
    nix(env, "nix-store", "--generate-binary-cache-key", "plain-cache", str(sec), str(pub))
    nix(
        env,
        "nix",
        "store",
        "sign",
        "--store",
        str(store),
        "--key-file",
        str(sec),
        "--recursive",
        top,
    )
    print(f"filling the {compression} cache (set-up, not timed)...", file=sys.stderr)
    url = f"file://{cache}?compression={compression}"
    nix(env, "nix", "copy", "--store", str(store), "--to", url, top)
    return cache, pub.read_text().strip()


def rounds(
    tmp: Path,
    seed: NodeProc,
    policy: Path,
    cache: Path,
    cache_key: str,
    count: int,
    timed: Timed,
    baseline: str,
) -> dict[str, list[float]]:
    """Seconds per round for "ferry" (the gateway of a fresh client node, empty store,
    `policy`, whose only peer is `seed`) and for `baseline` (`cache` served by
    `python -m http.server`), interleaved."""
    times: dict[str, list[float]] = {"ferry": [], baseline: []}
    with serve(cache) as cache_url:
        for r in range(count):
            print(f"round {r + 1}...", file=sys.stderr)
            client = NodeProc(tmp, f"client{r}", bootstrap=[seed.addr], policy=policy, timeout=10)
            try:
                client.start().wait_ready()
                node_key = (client.data_dir / "cache.pub").read_text().strip()
                try:
                    times["ferry"].append(
                        timed(tmp / f"dest-ferry-{r}", client.gateway_url, node_key)
                    )
                except SystemExit:
                    print("\n".join(client.log[-40:] + seed.log[-20:]), file=sys.stderr)
                    raise
            finally:
                client.stop()
            times[baseline].append(timed(tmp / f"dest-{baseline}-{r}", cache_url, cache_key))
    return times
