"""What the benches in which Nix substitutes from ferry and from a plain binary cache
share: Nix commands that end the bench on failure, the signed file cache, and the
interleaved rounds (a fresh client node each round, then the cache), with the CPU time
each side spent.

Every process runs on this one machine: the CPU the nodes spend (the seed's too, which
would be another machine in use) is taken from Nix, as the HTTP server's is. The CPU
figures say where a round's time went."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.httpdir import serve_process
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Rounds:
    """Per source ("ferry" or the baseline's label): seconds per round, and CPU seconds
    per round of Nix and of the side serving it (client and seed nodes, or the HTTP
    server)."""

    times: dict[str, list[float]]
    nix_cpu: dict[str, list[float]] = field(default_factory=dict)
    server_cpu: dict[str, list[float]] = field(default_factory=dict)

    def report(self) -> str:
        lines = ["CPU seconds per round (2 cores: both sides share them):"]
        for label in self.times:
            nix_cpu = ", ".join(f"{c:.1f}" for c in self.nix_cpu[label])
            served = ", ".join(f"{c:.1f}" for c in self.server_cpu[label])
            server = "client+seed" if label == "ferry" else "http.server"
            lines.append(f"  {label:<10} Nix {nix_cpu:<12} {server} {served}")
        return "\n".join(lines)


def _timed_cpu(
    timed: Timed, dest: Path, url: str, key: str, pids: list[int]
) -> tuple[float, float, float]:
    """`timed`'s seconds, its child processes' CPU seconds (Nix), and the CPU seconds
    `pids` spent meanwhile."""
    before, children = sum(cpu_seconds(p) for p in pids), _children_cpu()
    seconds = timed(dest, url, key)
    return seconds, _children_cpu() - children, sum(cpu_seconds(p) for p in pids) - before


def rounds(
    tmp: Path,
    seed: NodeProc,
    policy: Path,
    cache: Path,
    cache_key: str,
    count: int,
    timed: Timed,
    baseline: str,
) -> Rounds:
    """Seconds and CPU per round for "ferry" (the gateway of a fresh client node, empty
    store, `policy`, whose only peer is `seed`) and for `baseline` (`cache` served by
    `python -m http.server`), interleaved."""
    out = Rounds(
        {"ferry": [], baseline: []}, {"ferry": [], baseline: []}, {"ferry": [], baseline: []}
    )

    def record(label: str, got: tuple[float, float, float]) -> None:
        out.times[label].append(got[0])
        out.nix_cpu[label].append(got[1])
        out.server_cpu[label].append(got[2])

    assert seed.proc is not None
    with serve_process(cache) as (cache_url, server_pid):
        for r in range(count):
            print(f"round {r + 1}...", file=sys.stderr)
            client = NodeProc(tmp, f"client{r}", bootstrap=[seed.addr], policy=policy, timeout=10)
            try:
                client.start().wait_ready()
                assert client.proc is not None
                node_key = (client.data_dir / "cache.pub").read_text().strip()
                try:
                    record(
                        "ferry",
                        _timed_cpu(
                            timed,
                            tmp / f"dest-ferry-{r}",
                            client.gateway_url,
                            node_key,
                            [client.proc.pid, seed.proc.pid],
                        ),
                    )
                except SystemExit:
                    print("\n".join(client.log[-40:] + seed.log[-20:]), file=sys.stderr)
                    raise
            finally:
                client.stop()
            record(
                baseline,
                _timed_cpu(timed, tmp / f"dest-{baseline}-{r}", cache_url, cache_key, [server_pid]),
            )
    return out
