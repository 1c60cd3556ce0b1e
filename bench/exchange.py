"""Exchange throughput and latency, next to the ceiling of the stack measured in the same run.

    .venv/bin/python bench/exchange.py [--size-mib 256] [--rounds 2] [--data random|real]
                                       [--baseline REV]

Separate processes on 127.0.0.1 for every node:
  raw        one libp2p stream (noise + yamux, the same host set-up as a node) carrying the
             same bytes from a server process: the ceiling of py-libp2p here
  1 peer     a fresh client node fetching the path from one seed node
  3 peers    a fresh client node fetching it from three seed nodes at once
  latency    want-block round trips for one 64 KiB chunk on one stream (p50 / p99)
  baseline   with --baseline REV: the same two fetches by nodes of that git revision
             (checked out beside), from seeds of their own: what a change cost or gained
Rounds interleave the measurements, since this machine is noisy. `--data real` fetches a
tree of this machine's own files (/usr: libraries, programs, text), which compresses as
packages do; random data does not compress at all.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import multiaddr
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.daemon import api, control
from p2p import blocks
from p2p.blocks import BlockClient, Want
from p2p.host import make_host, quiet_libp2p
from tests.p2p.nodes import NodeProc, keys, policy

RAW = TProtocol("/ferry-bench/raw/1")
SP = "/nix/store/bcnchmarkbcnchmarkbcnchmarkbcncx-exchange-1.0"
LOCAL = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


async def raw_serve(path: str) -> None:
    """Child process: serve the file's bytes on one stream, print our address."""
    quiet_libp2p()
    host = make_host(create_new_key_pair())

    async def handler(stream) -> None:  # type: ignore[no-untyped-def]
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                await stream.write(chunk)
        await stream.close()

    host.set_stream_handler(RAW, handler)
    async with host.run([LOCAL]):
        print(host.get_addrs()[0], flush=True)
        await trio.sleep_forever()


async def raw_fetch(addr: str, size: int) -> float:
    quiet_libp2p()
    host = make_host(create_new_key_pair())
    async with host.run([LOCAL]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [RAW])
        t = time.perf_counter()
        got = 0
        while got < size:
            data = await stream.read(1 << 20)
            if not data:
                break
            got += len(data)
        dt = time.perf_counter() - t
        await host.close()
    assert got == size, (got, size)
    return size / dt / 1e6


async def latency(addr: str, digest: bytes, n: int) -> list[float]:
    quiet_libp2p()
    host = make_host(create_new_key_pair())
    out = []
    async with host.run([LOCAL]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [TProtocol(blocks.PROTOCOL)])
        client = BlockClient()
        for _ in range(n):
            t = time.perf_counter()
            await stream.write(client.want([Want(digest)]))
            replies: list[object] = []
            while not replies:
                replies = client.receive_data(await stream.read(1 << 20))
            out.append(time.perf_counter() - t)
        await stream.close()
        await host.close()
    return out


def fetch(client: NodeProc) -> float:
    t = time.perf_counter()
    got = trio.run(control.call, str(client.data_dir), api.FetchRequest(SP))
    dt = time.perf_counter() - t
    return got.progress.bytes_done / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--data",
        choices=("random", "real"),
        default="random",
        help="what the path holds: random bytes (default), or files from /usr",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure nodes of this git revision (e.g. the commit before a change)",
    )
    args = ap.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp_:
        tmp = Path(tmp_)
        tree = tmp / "tree"
        tree.mkdir()
        if args.data == "random":
            with open(tree / "data", "wb") as f:
                rnd = random.Random(1)
                for _ in range(args.size_mib):
                    f.write(rnd.randbytes(1 << 20))
        else:
            _real_tree(tree / "data", size)
        (tree / "small").write_bytes(random.Random(2).randbytes(60_000))  # one 64 KiB-policy chunk
        raw_file = tree / "data"
        if args.data == "real":  # the raw stream carries the same bytes, one file after another
            raw_file = tmp / "raw.bin"
            with open(raw_file, "wb") as out:
                for p in sorted((tree / "data").rglob("*")):
                    if p.is_file():
                        out.write(p.read_bytes())
            size = raw_file.stat().st_size
        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        code = {"": None}
        if args.baseline:
            code["baseline "] = _checkout(tmp / "baseline", args.baseline)
        seeds_of = {
            v: [
                NodeProc(
                    tmp,
                    f"{v or 'new'}seed{i}".replace(" ", "-"),
                    timeout=10,
                    code=c,
                    pack_ahead=True,  # the node's default; old code knows no such setting
                ).start()
                for i in range(3)
            ]
            for v, c in code.items()
        }
        seeds = seeds_of[""]
        procs = [s for ss in seeds_of.values() for s in ss]
        raw = subprocess.Popen(
            [sys.executable, __file__, "--raw-serve", str(raw_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for s in procs:
                s.wait_ready()
                s.json("publish", str(tree), "--store-path", SP, "--key", str(k["builder"][0]))
            for s in procs:
                s.wait_packed()  # not measured while a seed compresses in the background
            raw_addr = raw.stdout.readline().strip()  # type: ignore[union-attr]
            small = next(d for d in _digests(seeds[0]) if d[1] < (64 << 10))[0]
            labels = [f"{v}{n}" for v in code for n in ("1 peer", "3 peers")]
            results: dict[str, list[float]] = {"raw": [], **{label: [] for label in labels}}
            lat: list[float] = []
            for r in range(args.rounds):
                results["raw"].append(trio.run(raw_fetch, raw_addr, size))
                for v, c_root in code.items():
                    for n, boot in (("1 peer", seeds_of[v][:1]), ("3 peers", seeds_of[v])):
                        label = f"{v}{n}"
                        c = (
                            NodeProc(
                                tmp,
                                f"client-{label}-{r}".replace(" ", "-"),
                                bootstrap=[s.addr for s in boot],
                                policy=pol,
                                timeout=10,
                                code=c_root,
                                pack_ahead=True,
                            )
                            .start()
                            .wait_ready()
                        )
                        procs.append(c)
                        try:
                            results[label].append(fetch(c))
                        except control.ControlError:
                            print("\n".join(c.log[-40:]), file=sys.stderr)
                            raise
                        c.stop()
                lat += trio.run(latency, seeds[0].addr, small, 300)
        finally:
            raw.kill()
            for p in procs:
                p.stop()
            if args.baseline:
                repo = Path(__file__).resolve().parents[1]
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(repo),
                        "worktree",
                        "remove",
                        "--force",
                        str(tmp / "baseline"),
                    ],
                    capture_output=True,
                )
    best = {k_: max(v) for k_, v in results.items()}
    what = "random data" if args.data == "random" else "files from /usr"
    print(
        f"path: {size / 2**20:.0f} MiB of {what}, loopback, {args.rounds} interleaved rounds"
        + (f"; baseline: {args.baseline}" if args.baseline else "")
    )
    for label in results:
        runs = ", ".join(f"{x:.0f}" for x in results[label])
        print(f"  {label:<16} best {best[label]:6.1f} MB/s   (runs: {runs})")
    print(f"  1 peer / raw ceiling:  {best['1 peer'] / best['raw']:.2f}  (target >= 0.60)")
    print(f"  3 peers / raw ceiling: {best['3 peers'] / best['raw']:.2f}")
    if args.baseline:
        for n in ("1 peer", "3 peers"):
            print(f"  {n} / baseline {n}: {best[n] / best['baseline ' + n]:.2f}")
    lat.sort()
    print(
        f"  want-block round trip, 64 KiB chunk, {len(lat)} requests: "
        f"p50 {statistics.median(lat) * 1e3:.2f} ms, p99 {lat[int(len(lat) * 0.99) - 1] * 1e3:.2f} ms"
    )


def _real_tree(root: Path, size: int) -> None:
    """Copies of files under /usr, in a fixed order, until `size` bytes."""
    root.mkdir()
    total = 0
    for d in ("/usr/lib", "/usr/bin", "/usr/share"):
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file():
                    continue
                try:
                    n = src.stat().st_size
                    if n == 0:
                        continue
                    dst = root / src.relative_to("/usr")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                except OSError:
                    continue  # unreadable: skipped
                total += n
                if total >= size:
                    return


def _checkout(where: Path, rev: str) -> Path:
    """A detached worktree of this repository at `rev`."""
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(where), rev],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"--baseline {rev}: {r.stderr.strip()}")
    return where


def _digests(node: NodeProc) -> list[tuple[bytes, int]]:
    from node.local.index import Index

    # The node holds its store's lock; its index can still be read (WAL).
    ix = Index(os.path.join(node.data_dir, "index.sqlite"))
    try:
        return [(r.digest, r.length) for r in ix.all_chunks()]
    finally:
        ix.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--raw-serve":
        trio.run(raw_serve, sys.argv[2])
    else:
        main()
