"""What a node knows of its own reachability: whether peers can dial it, as they find
by dialing it back (p2p/reachability.py), and at which address.

The node asks up to ASKED of its connected peers. One that reached a port makes it
"public" at that address; answers that all say no make it "private" (behind a NAT or a
firewall); no answer leaves it "unknown". It asks again every RECHECK seconds, and every
RETRY while it knows nothing. Peers that do not speak the protocol (older nodes) are
passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import multiaddr
import trio

from node.exchange.network import Network
from p2p import frame, reachability
from p2p.reachability import Ask, ReachabilityError, Verdict
from p2p.stream import ByteStream, StreamGone, abort, read_frame, write

log = logging.getLogger(__name__)

ASKED = 3
ANSWER_TIMEOUT = 10.0  # a peer's dial-backs take DIAL_TIMEOUT at most
WAIT = 2.0  # for a first peer to ask
RETRY = 60.0  # while peers give no verdict
RECHECK = 1800.0
REQUEST_DEADLINE = 5.0  # for an asker to send its request


def tcp_ports(addrs: list[multiaddr.Multiaddr]) -> tuple[int, ...]:
    ports = []
    for a in addrs:
        try:
            ports.append(int(a.value_for_protocol("tcp")))
        except Exception:  # noqa: BLE001 - not a TCP address
            continue
    return tuple(dict.fromkeys(ports))[: reachability.MAX_PORTS]


class Reachability:
    def __init__(self, net: Network, listen_addrs: Callable[[], list[multiaddr.Multiaddr]]) -> None:
        self.net = net
        self.listen_addrs = listen_addrs  # () -> the host's addresses now
        self.status = "unknown"
        self.address: str | None = None  # where peers reached us, when public
        self.answers = 0  # peers that answered the last check
        self.changed = trio.Event()  # set (and replaced) when the status changes

    async def serve(self, stream: ByteStream, observed: str | None) -> None:
        """Answer one peer's request: dial it back on the ports it named."""
        try:
            with trio.fail_after(REQUEST_DEADLINE):
                ask = Ask.decode(await read_frame(stream, reachability.CAP))
            if observed is None:
                raise ReachabilityError("the connection has no IP address to dial back")
            await write(stream, (await reachability.check(observed, ask)).encode())
            await stream.close()
        except (trio.TooSlowError, ReachabilityError, frame.FrameError, StreamGone) as e:
            log.info("a reachability request went unanswered: %s", e)
            await abort(stream)

    async def ask(self, peer: str, ports: tuple[int, ...]) -> Verdict | None:
        stream = None
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                stream = await self.net.open_stream(peer, reachability.PROTOCOL)
                await write(stream, Ask(ports).encode())
                return Verdict.decode(await read_frame(stream, reachability.CAP))
        except Exception as e:  # noqa: BLE001 - gone, too slow, or does not speak it
            log.debug("%s gave no reachability verdict: %s", peer, e)
            return None
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await abort(stream)

    async def check(self) -> str:
        ports = tcp_ports(self.listen_addrs())
        peers = self.net.peers()[:ASKED]
        if not ports or not peers:
            return self.status
        verdicts = [v for v in [await self.ask(p, ports) for p in peers] if v is not None]
        self.answers = len(verdicts)
        reached = [v for v in verdicts if v.reachable]
        before = self.status
        if reached:
            self.status = "public"
            v = reached[0]
            self.address = f"/ip4/{v.observed}/tcp/{v.reachable[0]}"
        elif verdicts:
            self.status, self.address = "private", None
        if self.status != before:
            self.changed.set()
            self.changed = trio.Event()
            log.info(
                "reachability: %s%s (%d of %d peers answered)",
                self.status,
                f" at {self.address}" if self.address else "",
                len(verdicts),
                len(peers),
            )
        return self.status

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            status = await self.check()
            if status != "unknown":
                await trio.sleep(RECHECK)
            else:
                await trio.sleep(RETRY if self.answers or self.net.peers() else WAIT)
