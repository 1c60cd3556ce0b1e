"""py-libp2p's transports side by side on loopback, in one run: TCP (noise, yamux: the
host ferry makes) and QUIC (`libp2p.transport.quic`, on aioquic), each between two hosts
of this process.

    .venv/bin/python bench/transports.py [--round-trips 500] [--bulk-mib 64] [--runs 2]

  round trip  100 bytes out, 4 KiB back, on one kept stream: p50 / p99 (what a lazy
              mount's cold read pays per request)
  bulk        --bulk-mib written on one stream and acknowledged: MB/s
The raw ceiling of the same loopback, measured the same way with plain sockets in this
process, is printed beside them.

Measured here (2026-12, py-libp2p 0.8.1, 2 runs): TCP 1.04-1.11 ms round trips and
81-86 MB/s; QUIC 2.9-4.1 ms and about 2 MB/s; plain sockets 0.11-0.16 ms and ~2 GB/s.
So ferry listens on TCP only, and punches holes with TCP (node/daemon/relay.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PING, PONG = b"w" * 100, b"x" * 4096
PIECE = 256 << 10


def _figures(name: str, rts: list[float], seconds: float, nbytes: int) -> str:
    p99 = sorted(rts)[int(len(rts) * 0.99)]
    return (
        f"  {name:26s} round trip p50 {statistics.median(rts) * 1e3:6.2f} ms"
        f"  p99 {p99 * 1e3:6.2f} ms   bulk {nbytes / seconds / 1e6:7.1f} MB/s"
    )


async def _exercise(read: Any, write: Any, n: int, nbytes: int) -> tuple[list[float], float]:
    rts = []
    for _ in range(n):
        t = time.perf_counter()
        await write(PING)
        got = 0
        while got < len(PONG):
            got += len(await read(65536))
        rts.append(time.perf_counter() - t)
    blob = b"y" * PIECE
    t = time.perf_counter()
    for _ in range(nbytes // PIECE):
        await write(blob)
    assert await read(1) == b"k"
    return rts, time.perf_counter() - t


async def _serve(read: Any, write: Any, nbytes: int) -> None:
    while (data := await read(65536)) == PING:
        await write(PONG)
    total = len(data)
    while total < nbytes:
        total += len(await read(1 << 20))
    await write(b"k")


async def raw(n: int, nbytes: int) -> str:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            conn = await listener.accept()
            await _serve(conn.receive_some, conn.send_all, nbytes)

        nursery.start_soon(accept)
        conn = await trio.open_tcp_stream("127.0.0.1", port)
        rts, took = await _exercise(conn.receive_some, conn.send_all, n, nbytes)
        await conn.aclose()
        await listener.aclose()
    return _figures("raw TCP socket", rts, took, nbytes)


async def libp2p(quic: bool, n: int, nbytes: int) -> str:
    from libp2p import new_host
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2p.host import make_host, quiet_libp2p

    quiet_libp2p()
    if quic:
        addr = multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")
        a, b = (
            new_host(key_pair=create_new_key_pair(), enable_quic=True, listen_addrs=[addr])
            for _ in range(2)
        )
    else:
        addr = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
        a, b = (make_host(create_new_key_pair()) for _ in range(2))
    proto = TProtocol("/bench/transport")
    async with a.run([addr]), b.run([addr]):

        async def handler(stream: Any) -> None:
            await _serve(stream.read, stream.write, nbytes)

        b.set_stream_handler(proto, handler)
        to = b.get_addrs()[0]
        if "/p2p/" not in str(to):
            to = multiaddr.Multiaddr(f"{to}/p2p/{b.get_id()}")
        await a.connect(info_from_p2p_addr(to))
        s = await a.new_stream(b.get_id(), [proto])
        rts, took = await _exercise(s.read, s.write, n, nbytes)
        await s.reset()
        await a.close()
        await b.close()
    return _figures("py-libp2p QUIC" if quic else "py-libp2p TCP+noise+yamux", rts, took, nbytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-trips", type=int, default=500)
    ap.add_argument("--bulk-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    n, nbytes = args.round_trips, args.bulk_mib << 20
    print(f"loopback, {n} round trips and {args.bulk_mib} MiB per transport, {args.runs} runs")
    for run in range(1, args.runs + 1):
        print(f"run {run}")
        print(trio.run(raw, n, nbytes), flush=True)
        print(trio.run(libp2p, False, n, nbytes), flush=True)
        print(trio.run(libp2p, True, n, nbytes), flush=True)


if __name__ == "__main__":
    main()
