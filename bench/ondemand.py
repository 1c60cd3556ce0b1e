"""Lazy mounts: cold reads through `ferry mount` (data on a peer over loopback), next to
the same reads from a local ext4 copy with the page cache dropped, in the same run.

    sudo .venv/bin/python bench/ondemand.py [--small 300] [--big-mib 100]

  small     open + read of a cold 4 KiB file, p50 / p99 (a chunk fetched per file)
  seq       cold sequential read of a --big-mib file, MB/s
  amplification  bytes fetched / bytes read: 4 KiB reads at random offsets of a second
            --big-mib file, and the sequential read above
  find      `find -ls` over the whole path (both big files and the small ones): chunk
            bytes it fetched (none: listing reads the image only)
  baselines in the same run: the same reads from a local ext4 copy, page cache dropped;
            `ferry fetch` of the whole path by a third node (its own MB/s); and the floor
            under any cold read, a py-libp2p round trip (100 bytes out, 4 KiB back) on a
            stream kept open between two hosts in this process
Needs root and Linux 6.14+ (fanotify pre-content, file-backed EROFS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store.chunking import DEFAULT_POLICY
from tests.p2p.nodes import NodeProc, keys, policy

SP = "/nix/store/" + "8" * 32 + "-bench-lazy-1.0"


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def small_reads(root: Path, names: list[str]) -> list[float]:
    out = []
    for name in names:
        t = time.perf_counter()
        with open(root / name, "rb", buffering=0) as f:
            f.read(4096)
        out.append(time.perf_counter() - t)
    return out


async def round_trips(n: int) -> list[float]:
    """A request of 100 bytes and a reply of 4 KiB, `n` times, on one py-libp2p stream
    between two hosts of this process (noise, yamux, loopback): what any fetch pays."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from tests.p2p.hosts import two_hosts

    out = []
    async with contextlib.AsyncExitStack() as stack:
        a, b = await two_hosts(stack)

        async def echo(stream: Any) -> None:
            while await stream.read(65536):
                await stream.write(b"x" * 4096)

        b.set_stream_handler(TProtocol("/bench/echo"), echo)
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        s = await a.new_stream(b.get_id(), [TProtocol("/bench/echo")])
        for _ in range(n):
            t = time.perf_counter()
            await s.write(b"w" * 100)
            got = 0
            while got < 4096:
                got += len(await s.read(65536))
            out.append(time.perf_counter() - t)
        await s.close()
    return out


def present(client: NodeProc, mnt: Path) -> int:
    return next(m["bytes_present"] for m in client.json("mounts") if m["dir"] == str(mnt))


def ms(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--big-mib", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (fanotify pre-content, mount(2), dropping the page cache)")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-lazy-") as tmp_:
        tmp = Path(tmp_)
        src = tmp / "src"
        (src / "small").mkdir(parents=True)
        rnd = random.Random(1)
        names = [f"small/f{i:04d}" for i in range(args.small)]
        for n in names:
            (src / n).write_bytes(rnd.randbytes(4096))
        for big in ("seq.bin", "rand.bin"):
            with open(src / big, "wb") as f:
                for _ in range(args.big_mib):
                    f.write(rnd.randbytes(1 << 20))
        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        seed = NodeProc(tmp, "seed", timeout=10).start().wait_ready()
        client = (
            NodeProc(tmp, "client", bootstrap=[seed.addr], policy=pol, timeout=10)
            .start()
            .wait_ready()
        )
        fetcher = (
            NodeProc(tmp, "fetcher", bootstrap=[seed.addr], policy=pol, timeout=10)
            .start()
            .wait_ready()
        )
        mnt = tmp / "mnt"
        mnt.mkdir()
        try:
            seed.json("publish", str(src), "--store-path", SP, "--key", str(k["builder"][0]))
            client.json("mount", SP, str(mnt))
            before = present(client, mnt)
            subprocess.run(["find", str(mnt), "-ls"], check=True, stdout=subprocess.DEVNULL)
            find_bytes = present(client, mnt) - before
            drop_caches()
            lazy_small = small_reads(mnt, names)
            drop_caches()
            local_small = small_reads(src, names)

            before = present(client, mnt)
            t = time.perf_counter()
            n = read_all(mnt / "seq.bin")
            lazy_seq = n / (time.perf_counter() - t) / 1e6
            seq_amp = (present(client, mnt) - before) / n
            drop_caches()
            t = time.perf_counter()
            n = read_all(src / "seq.bin")
            local_seq = n / (time.perf_counter() - t) / 1e6

            before = present(client, mnt)
            size = args.big_mib << 20
            read = 0
            with open(mnt / "rand.bin", "rb", buffering=0) as f:
                for _ in range(200):
                    f.seek(rnd.randrange(0, size - 4096) // 4096 * 4096)
                    read += len(f.read(4096))
            rand_amp = (present(client, mnt) - before) / read
            client.ferry("umount", str(mnt))
            fetched = fetcher.json("fetch", SP)
            fetch_rate = fetched["rate"] / 1e6
            floor = trio.run(round_trips, 300)
        finally:
            fetcher.stop()
            client.stop()
            seed.stop()

    print(
        f"lazy mount (data on a peer, loopback) vs local ext4 copy, page cache dropped; {args.small} small files, "
        f"{args.big_mib} MiB big files"
    )
    print(
        f"  cold 4 KiB open+read  lazy p50 {statistics.median(lazy_small) * 1e3:6.2f} ms  p99 {ms(lazy_small, 0.99):6.2f} ms"
        f"   local p50 {statistics.median(local_small) * 1e3:6.2f} ms  p99 {ms(local_small, 0.99):6.2f} ms"
    )
    print(
        f"  cold sequential read  lazy {lazy_seq:6.1f} MB/s   local {local_seq:6.1f} MB/s"
        f"   ferry fetch {fetch_rate:6.1f} MB/s   lazy / fetch {lazy_seq / fetch_rate:.2f}"
    )
    print(
        f"  py-libp2p round trip  p50 {statistics.median(floor) * 1e3:6.2f} ms  p99 {ms(floor, 0.99):6.2f} ms"
        "   (the floor under a cold read)"
    )
    print(f"  find -ls over the path fetched {find_bytes:,} chunk bytes")
    chunk = DEFAULT_POLICY.chunk_size(args.big_mib << 20)
    print(
        f"  fetch amplification   sequential {seq_amp:.2f}   random 4 KiB reads {rand_amp:.1f} "
        f"(the file's chunks are {chunk >> 10} KiB: one chunk per read is {chunk // 4096})"
    )


if __name__ == "__main__":
    main()
