"""Reaching nodes behind NAT: the relay a public node runs for them, the slots they keep
on relays, and the hole punch that turns a relayed meeting into a direct connection.

Formats: p2p.relay (reserve, connect, the circuit) and p2p.punch (the punch over it).

- `RelayService`, on a node that serves (`relay = "auto"` and peers found it public, or
  `relay = "on"`): holds up to `relay_reservations` slots and joins circuits, each within
  `relay_circuit_bytes` and `relay_circuit_seconds`, at most `relay_circuits` at once and
  `relay_circuits_per_peer` per peer. It counts what it carried.
- `Relays`, on every node: while peers find it private it keeps a slot on up to
  RESERVE_ON relays and advertises `<relay>/p2p-circuit` addresses (identify, DHT
  provider records). It dials a peer it cannot reach directly through a relay, punches,
  and keeps the circuit as the connection only when the punch fails; `relayed_via` says
  which peers are reached that way (a fetch reports them).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.abc import ConnectionType, IHost, INetConn, INetStream, INetwork
from libp2p.custom_types import TProtocol
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.daemon import api
from node.daemon.config import NodeConfig
from p2p import punch, relay
from p2p.frame import HEADER
from p2p.host import Notifee
from p2p.stream import StreamGone, abort, finish, read_some, write

log = logging.getLogger(__name__)

RESERVATION_TTL = 3600  # seconds a relay holds a slot; the client renews at half of it
RESERVE_ON = 2  # relays a private node keeps a slot on
LOOK_EVERY = 10.0  # seconds between looks at slots (and at once when reachability changes)
REFUSED_AGAIN = 30.0  # before asking a relay that refused again
HANDSHAKE_TIMEOUT = 10.0  # for each request and answer before a circuit carries bytes
PUNCH_TIMEOUT = 3.0  # for the simultaneous dials: a lost SYN is sent again after 1 s
DIRECT_FIRST = 2.0
PUNCH_AGAIN = 600.0  # seconds before a peer a punch failed to reach is punched again
CUTS_KEPT = 3600.0  # seconds a closed relayed connection is remembered (a fetch reports it)  # for direct dials to a peer that also has relayed addresses


def is_circuit(addr: multiaddr.Multiaddr) -> bool:
    return any(p.name == "p2p-circuit" for p in addr.protocols())


def circuit_relay(addr: multiaddr.Multiaddr) -> tuple[str, multiaddr.Multiaddr | None] | None:
    """(relay peer id, the relay's address or None) of `.../p2p/RELAY/p2p-circuit[/p2p/X]`."""
    text = str(addr)
    head, sep, _ = text.partition("/p2p-circuit")
    if not sep or "/p2p/" not in head:
        return None
    where, _, relay_id = head.rpartition("/p2p/")
    return relay_id, (multiaddr.Multiaddr(where) if where else None)


class Framed:
    """A stream read one frame at a time. The bytes after the last frame read stay
    unread (`rest`): once the handshakes are done they belong to whoever takes the
    stream on (the other end of a circuit, or a noise handshake)."""

    def __init__(self, stream: INetStream, cap: int) -> None:
        self.stream = stream
        self.cap = cap
        self._buf = bytearray()

    async def next(self) -> bytes:
        while True:
            if len(self._buf) >= HEADER:
                n = int.from_bytes(self._buf[:HEADER], "big")
                if n > self.cap:
                    raise relay.RelayError(f"a {n:,}-byte message (at most {self.cap:,})")
                if len(self._buf) >= HEADER + n:
                    payload = bytes(self._buf[HEADER : HEADER + n])
                    del self._buf[: HEADER + n]
                    return payload
            data = await read_some(self.stream)
            if not data:
                raise StreamGone("closed before a whole message")
            self._buf += data

    def rest(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class CircuitStream(ReadWriteCloser):
    """A relay circuit as the byte stream a libp2p connection runs over."""

    def __init__(self, stream: INetStream, first: bytes) -> None:
        self.stream = stream
        self._first = first

    async def read(self, n: int | None = None) -> bytes:
        if self._first:
            n = len(self._first) if n is None else n
            out, self._first = self._first[:n], self._first[n:]
            return out
        return await self.stream.read(n)

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def close(self) -> None:
        await self.stream.reset()  # the relay ends the circuit at once, both ways

    def get_remote_address(self) -> tuple[str, int] | None:
        return None


def _observed(stream: INetStream) -> str:
    try:
        remote = stream.get_remote_address()
    except Exception:  # noqa: BLE001 - a closed or relayed connection has none
        return ""
    return remote[0] if remote else ""


async def _send(stream: INetStream, message: relay.Message | punch.Message) -> None:
    encode = (
        punch.encode
        if isinstance(message, punch.Candidates | punch.Sync | punch.Outcome)
        else relay.encode
    )
    await write(stream, encode(message))  # type: ignore[arg-type]


class CircuitSpent(Exception):
    """A circuit carried all the bytes it may."""


@dataclass
class _Budget:
    left: int

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise CircuitSpent


class RelayService:
    def __init__(self, host: IHost, config: NodeConfig, public: Callable[[], bool]) -> None:
        self.host = host
        self.config = config
        self.public = public  # () -> whether peers found this node dialable
        self.reservations: dict[str, float] = {}  # peer -> when its slot runs out (trio time)
        self.open: Counter[str] = Counter()  # open circuits per peer, either end
        self.circuits = 0  # open now
        self.circuits_total = 0
        self.bytes_relayed = 0
        self.refused = 0
        self.ended_by_limit = 0

    def serving(self) -> bool:
        mode = self.config.relay
        return mode == "on" or (mode == "auto" and self.public())

    def _held(self) -> dict[str, float]:
        """The slots that hold: a peer that disconnected holds none (nobody could reach
        it through us), nor one that has not renewed."""
        now = trio.current_time()
        connected = {str(p) for p in self.host.get_connected_peers()}
        for peer in [p for p, t in self.reservations.items() if t <= now or p not in connected]:
            del self.reservations[peer]
        return self.reservations

    async def serve(self, stream: INetStream, peer: str) -> None:
        framed = Framed(stream, relay.CAP)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                message = relay.decode(await framed.next())
            if not isinstance(message, relay.Reserve | relay.Connect):
                raise relay.RelayError(f"a {type(message).__name__.upper()} is no request")
            if not self.serving():
                why = (
                    "this node does not relay (relay = off)"
                    if self.config.relay == "off"
                    else "this node does not relay: peers have not found it public"
                )
                await self._refuse(stream, why)
            elif isinstance(message, relay.Reserve):
                await self._reserve(stream, peer)
            else:
                await self._join(framed, peer, message.peer)
        except (trio.TooSlowError, relay.RelayError, StreamGone) as e:
            log.info("relay request from %s dropped: %s", peer, e)
            await abort(stream)

    async def _refuse(self, stream: INetStream, reason: str) -> None:
        self.refused += 1
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            await _send(stream, relay.Refused(reason))
            await finish(stream)

    async def _reserve(self, stream: INetStream, peer: str) -> None:
        held = self._held()
        limit = self.config.limits.relay_reservations
        if peer not in held and len(held) >= limit:
            await self._refuse(stream, f"the relay is full: it holds {limit} reservations")
            return
        if peer not in held:
            log.info("relay: holding a slot for %s", peer)
        held[peer] = trio.current_time() + RESERVATION_TTL
        await _send(stream, relay.Reserved(RESERVATION_TTL, _observed(stream)))
        await finish(stream)

    async def _join(self, source: Framed, peer: str, target: str) -> None:
        limits = self.config.limits
        if target not in self._held():
            await self._refuse(source.stream, f"{target} holds no reservation on this relay")
            return
        if self.circuits >= limits.relay_circuits:
            await self._refuse(source.stream, f"the relay carries {self.circuits} circuits already")
            return
        if max(self.open[peer], self.open[target]) >= limits.relay_circuits_per_peer:
            await self._refuse(
                source.stream, f"{limits.relay_circuits_per_peer} circuits per peer at most"
            )
            return
        max_bytes, max_seconds = limits.relay_circuit_bytes, int(limits.relay_circuit_seconds)
        # Counted from here, before the first wait: requests arriving together cannot
        # all pass the checks above.
        self.circuits += 1
        self.open[peer] += 1
        self.open[target] += 1
        stop = None
        carried = 0
        why = "ended"
        try:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    stop = await self.host.new_stream(
                        ID.from_base58(target), [TProtocol(relay.STOP)]
                    )
                    other = Framed(stop, relay.CAP)
                    await _send(
                        stop,
                        relay.Incoming(
                            peer, _observed(source.stream), _observed(stop), max_bytes, max_seconds
                        ),
                    )
                    answer = relay.decode(await other.next())
            except Exception as e:  # noqa: BLE001 - gone since it reserved, too slow, or junk
                await self._refuse(source.stream, f"{target} did not take the circuit: {e}")
                return
            if not isinstance(answer, relay.Accept):
                why = answer.reason if isinstance(answer, relay.Refused) else "out of turn"
                await self._refuse(source.stream, f"{target} refused the circuit: {why}")
                return
            await _send(
                source.stream,
                relay.Connected(_observed(source.stream), _observed(stop), max_bytes, max_seconds),
            )
            self.circuits_total += 1
            budget = _Budget(max_bytes)
            with trio.move_on_after(max_seconds) as timer:
                try:
                    async with trio.open_nursery() as nursery:

                        async def pump(a: Framed, b: Framed) -> None:
                            nonlocal carried
                            data = a.rest()
                            while True:
                                if data:
                                    budget.take(len(data))
                                    carried += len(data)
                                    self.bytes_relayed += len(data)
                                    await write(b.stream, data)
                                data = await read_some(a.stream)
                                if not data:
                                    await finish(b.stream)  # its end, one way
                                    return

                        nursery.start_soon(pump, source, other)
                        nursery.start_soon(pump, other, source)
                except* CircuitSpent:
                    why = f"reached its {max_bytes:,}-byte limit"
                    self.ended_by_limit += 1
                except* StreamGone:
                    why = "one end left"
            if timer.cancelled_caught:
                why = f"reached its {max_seconds} s limit"
                self.ended_by_limit += 1
        finally:
            self.circuits -= 1
            self.open[peer] -= 1
            self.open[target] -= 1
            with trio.CancelScope(shield=True):
                await abort(source.stream)
                if stop is not None:
                    await abort(stop)
        log.info("relay: circuit %s -> %s %s after %s bytes", peer, target, why, f"{carried:,}")

    def report(self) -> api.RelayService:
        return api.RelayService(
            serving=self.serving(),
            reservations=len(self._held()),
            circuits=self.circuits,
            circuits_total=self.circuits_total,
            bytes_relayed=self.bytes_relayed,
            refused=self.refused,
            ended_by_limit=self.ended_by_limit,
        )


@dataclass
class Slot:
    relay: str
    addr: multiaddr.Multiaddr  # the relay's own address: the base of ours through it
    renew_at: float


@dataclass(frozen=True)
class Cut:
    """A relayed connection that closed: when, and the limits its relay had named."""

    relay: str
    at: float
    max_bytes: int
    max_seconds: int


class Relays(Notifee):
    """This node's side of relays: its slots, the dialing through a relay, the punch."""

    def __init__(
        self,
        host: IHost,
        config: NodeConfig,
        private: Callable[[], bool],
        changed: Callable[[], trio.Event],
        connect: Callable[[PeerInfo], Any],
        listen_addrs: Callable[[], list[multiaddr.Multiaddr]],
    ) -> None:
        self.host = host
        self.config = config
        self.private = private  # () -> peers found this node not dialable
        self.changed = changed  # () -> an event set when that may have changed
        self.connect = connect  # async (PeerInfo) -> bool: a direct dial (node.daemon.discovery)
        self.listen_addrs = listen_addrs
        self.slots: dict[str, Slot] = {}
        self._refused: dict[str, float] = {}  # relay -> not asked again before
        self.via: dict[str, tuple[str, Any]] = {}  # peer -> (relay, its connection) when relayed
        self._limits: dict[str, tuple[int, int]] = {}  # peer -> its circuit's (bytes, seconds)
        self.cuts: dict[str, Cut] = {}  # peer -> its last relayed connection that closed
        self._punch_failed_at: dict[str, float] = {}
        host.get_network().register_notifee(self)
        self.punched = 0
        self.punch_failed = 0

    # --- slots on relays

    def addrs(self) -> list[multiaddr.Multiaddr]:
        """Where peers reach this node through its relays: RELAY-ADDR/p2p/RELAY/p2p-circuit."""
        return [
            s.addr.encapsulate(multiaddr.Multiaddr(f"/p2p/{s.relay}/p2p-circuit"))
            for s in self.slots.values()
        ]

    def _relay_addr(self, peer: str) -> multiaddr.Multiaddr | None:
        """Where peers dial the relay: its bootstrap address, else the address our own
        connection to it reached (a private node dials out: the relay's public one)."""
        for text in self.config.bootstrap:
            if text.endswith(f"/p2p/{peer}"):
                return multiaddr.Multiaddr(text).decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))
        for conn in self.host.get_network().get_connections(ID.from_base58(peer)):
            try:
                remote = conn.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a relayed or closing connection has none
                remote = None
            if remote:
                family = "ip6" if ":" in remote[0] else "ip4"
                return multiaddr.Multiaddr(f"/{family}/{remote[0]}/tcp/{remote[1]}")
        return None

    def _candidates(self) -> list[str]:
        """Connected peers to ask for a slot: bootstrap peers first."""
        connected = [str(p) for p in self.host.get_connected_peers()]
        boot = [b.rsplit("/p2p/", 1)[-1] for b in self.config.bootstrap]
        ordered = [p for p in boot if p in connected] + [p for p in connected if p not in boot]
        now = trio.current_time()
        return [
            p
            for p in ordered
            if p not in self.slots and p not in self.via and self._refused.get(p, 0) <= now
        ]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.keep_slots()
            with trio.move_on_after(LOOK_EVERY):
                await self.changed().wait()

    async def keep_slots(self) -> None:
        connected = {str(p) for p in self.host.get_connected_peers()}
        for gone in [r for r in self.slots if r not in connected]:
            log.info("relay: lost the slot on %s (disconnected)", gone)
            del self.slots[gone]
        if not self.private():
            if self.slots:
                log.info("relay: peers can dial this node now; dropping %d slots", len(self.slots))
                self.slots.clear()
            return
        now = trio.current_time()
        for slot in [s for s in self.slots.values() if s.renew_at <= now]:
            await self._reserve(slot.relay)
        for peer in self._candidates():
            if len(self.slots) >= RESERVE_ON:
                break
            await self._reserve(peer)

    async def _reserve(self, peer: str) -> None:
        addr = self._relay_addr(peer)
        stream = None
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(relay.HOP)])
                await _send(stream, relay.Reserve())
                answer = relay.decode(await Framed(stream, relay.CAP).next())
        except Exception as e:  # noqa: BLE001 - does not speak it, gone, or too slow
            answer = relay.Refused(f"no answer ({type(e).__name__}: {e})")
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await abort(stream)
        if not isinstance(answer, relay.Reserved) or addr is None:
            why = answer.reason if isinstance(answer, relay.Refused) else "its address is unknown"
            log.debug("relay: %s gave no slot: %s", peer, why)
            self.slots.pop(peer, None)
            self._refused[peer] = trio.current_time() + REFUSED_AGAIN
            return
        if peer not in self.slots:
            log.info(
                "relay: reserved a slot on %s; peers reach this node at %s/p2p/%s/p2p-circuit",
                peer,
                addr,
                peer,
            )
        self.slots[peer] = Slot(peer, addr, trio.current_time() + answer.ttl / 2)

    # --- through a relay

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = str(conn.muxed_conn.peer_id)
        got = self.via.get(peer)
        if got is not None and got[1] in (conn, conn.muxed_conn):
            del self.via[peer]
            max_bytes, max_seconds = self._limits.pop(peer, (0, 0))
            now = trio.current_time()
            for old in [p for p, c in self.cuts.items() if c.at < now - CUTS_KEPT]:
                del self.cuts[old]
            self.cuts[peer] = Cut(got[0], now, max_bytes, max_seconds)
            log.info("the connection to %s through relay %s closed", peer, got[0])

    def cut_since(self, when: float) -> str | None:
        """Why a fetch that started at `when` may have lost peers: relayed connections
        that closed since, with their relays' limits."""
        cut = {p: c for p, c in self.cuts.items() if c.at >= when}
        if not cut:
            return None
        return "; ".join(
            f"the connection to {peer} through relay {c.relay} ended (the relay carries at "
            f"most {c.max_bytes:,} bytes for {c.max_seconds} s a connection): fetch again to "
            "go on, or let one of the two nodes be dialed (forward its TCP port, "
            "docs/operations.md)"
            for peer, c in sorted(cut.items())
        )

    def unpunchable(self, peer: str) -> bool:
        """A punch to this peer failed lately: its router (or ours) maps each connection to
        a new port. Dialing it again goes straight through a relay, sparing the direct
        dials and the punch their seconds (a fetch that a relay's byte limit cut redials
        once per circuit)."""
        failed = self._punch_failed_at.get(peer)
        return failed is not None and trio.current_time() - failed < PUNCH_AGAIN

    def relayed_via(self, peer: str, since: float | None = None) -> str | None:
        """The relay this peer's connection runs through, if it does (or, given `since`,
        one that did and closed after then)."""
        got = self.via.get(peer)
        if got is not None:
            return got[0]
        cut = self.cuts.get(peer)
        return cut.relay if cut is not None and since is not None and cut.at >= since else None

    async def dial(self, peer: str, addrs: Iterable[multiaddr.Multiaddr]) -> bool:
        """Reach `peer` through one of the relays its circuit addresses name, and the
        bootstrap peers after them; punch through to a direct connection if possible."""
        relays: dict[str, multiaddr.Multiaddr | None] = {}
        for a in addrs:
            parsed = circuit_relay(a)
            if parsed is not None:
                relays.setdefault(*parsed)
        for b in self.config.bootstrap:
            relay_id = b.rsplit("/p2p/", 1)[-1]
            relays.setdefault(relay_id, self._relay_addr(relay_id))
        relays.pop(peer, None)
        relays.pop(str(self.host.get_id()), None)
        for relay_id, where in relays.items():
            if await self._dial_through(peer, relay_id, where):
                return True
        return False

    async def _dial_through(
        self, peer: str, relay_id: str, where: multiaddr.Multiaddr | None
    ) -> bool:
        rid = ID.from_base58(relay_id)
        if rid not in self.host.get_connected_peers() and (
            where is None or not await self.connect(PeerInfo(rid, [where]))
        ):
            return False
        stream = None
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await self.host.new_stream(rid, [TProtocol(relay.HOP)])
                await _send(stream, relay.Connect(peer))
                framed = Framed(stream, relay.CAP)
                answer = relay.decode(await framed.next())
        except Exception as e:  # noqa: BLE001 - does not speak it, gone, or too slow
            log.info("relay %s did not join us to %s: %s", relay_id, peer, e)
            if stream is not None:
                await abort(stream)
            return False
        if not isinstance(answer, relay.Connected):
            why = answer.reason if isinstance(answer, relay.Refused) else "it answered out of turn"
            log.info("relay %s did not join us to %s: %s", relay_id, peer, why)
            await abort(stream)
            return False
        try:
            punched = await self._punch_as_dialer(framed, peer, answer)
            if punched:
                await abort(stream)
                return True
            circuit = RawConnection(
                CircuitStream(stream, framed.rest()),
                True,
                ConnectionType.RELAYED,
                [self._circuit_addr(relay_id, peer)],
            )
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                conn = await self.host.upgrade_outbound_connection(circuit, ID.from_base58(peer))
        except Exception as e:  # noqa: BLE001 - the circuit broke, or the peer is not who it should be
            log.info("connecting to %s through relay %s failed: %s", peer, relay_id, e)
            await abort(stream)
            return False
        self.via[peer] = (relay_id, conn)
        self._limits[peer] = (answer.max_bytes, answer.max_seconds)
        log.info(
            "connected to %s through relay %s (no direct connection: the hole punch failed); "
            "the relay carries at most %s bytes for %s s",
            peer,
            relay_id,
            f"{answer.max_bytes:,}",
            answer.max_seconds,
        )
        return True

    @staticmethod
    def _circuit_addr(relay_id: str, peer: str) -> multiaddr.Multiaddr:
        return multiaddr.Multiaddr(f"/p2p/{relay_id}/p2p-circuit/p2p/{peer}")

    async def accept(self, stream: INetStream, relay_id: str) -> None:
        """A relay joins a peer to us (the stop side)."""
        framed = Framed(stream, relay.CAP)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                incoming = relay.decode(await framed.next())
            if not isinstance(incoming, relay.Incoming):
                raise relay.RelayError(f"a {type(incoming).__name__.upper()} is not INCOMING")
            if relay_id not in self.slots:
                await _send(stream, relay.Refused("this node holds no slot on you"))
                await finish(stream)
                return
            if len(self.via) >= self.config.limits.relay_circuits:
                await _send(stream, relay.Refused("this node has all the relayed peers it takes"))
                await finish(stream)
                return
            await _send(stream, relay.Accept())
            if await self._punch_as_listener(framed, incoming):
                await abort(stream)
                return
            circuit = RawConnection(
                CircuitStream(stream, framed.rest()),
                False,
                ConnectionType.RELAYED,
                [self._circuit_addr(relay_id, incoming.peer)],
            )
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                muxed = await self.host.upgrade_inbound_connection(
                    circuit, self._circuit_addr(relay_id, incoming.peer)
                )
            if str(muxed.peer_id) != incoming.peer:
                await muxed.close()
                raise relay.RelayError(
                    f"the relay said {incoming.peer}, noise says {muxed.peer_id}"
                )
        except Exception as e:  # noqa: BLE001 - the circuit or the handshake failed
            log.info("a circuit from relay %s failed: %s", relay_id, e)
            await abort(stream)
            return
        self.via[incoming.peer] = (relay_id, self._conn_of(incoming.peer, muxed))
        self._limits[incoming.peer] = (incoming.max_bytes, incoming.max_seconds)
        log.info("%s connected through relay %s (the hole punch failed)", incoming.peer, relay_id)

    def _conn_of(self, peer: str, muxed: Any) -> Any:
        for conn in self.host.get_network().get_connections(ID.from_base58(peer)):
            if getattr(conn, "muxed_conn", None) is muxed:
                return conn
        return muxed

    # --- the punch

    def _mine(self, observed: str) -> tuple[str, ...]:
        """Where this node expects a punch to reach it: the IP the relay saw, each TCP
        port it listens on (a port-keeping NAT maps the port to itself)."""
        if not observed or self.config.relay == "off":
            return ()
        ports = []
        for a in self.listen_addrs():
            try:
                ports.append(int(a.value_for_protocol("tcp")))
            except Exception:  # noqa: BLE001 - not TCP
                continue
        family = "ip6" if ":" in observed else "ip4"
        return tuple(f"/{family}/{observed}/tcp/{p}" for p in dict.fromkeys(ports))[
            : punch.MAX_ADDRS
        ]

    def _source(self, family: str) -> tuple[str, int] | None:
        """The (ip, port) this node listens on, to dial from."""
        for a in self.listen_addrs():
            names = [p.name for p in a.protocols()]
            if names[:2] == [family, "tcp"]:
                return a.value_for_protocol(family), int(a.value_for_protocol("tcp"))
        return None

    async def _simultaneous(self, targets: tuple[str, ...], peer: str, initiator: bool) -> Any:
        """Dial the peer's candidates from our listen port until one connects (the peer
        dials ours at the same time) and upgrade it: noise's initiator is the side that
        asked the relay. None if nothing got through."""
        want = ID.from_base58(peer)
        with trio.move_on_after(PUNCH_TIMEOUT):
            for attempt in range(3):
                for text in targets:
                    target = multiaddr.Multiaddr(text)
                    family = target.protocols()[0].name
                    source = self._source(family)
                    network: Any = self.host.get_network()
                    transport = network.transport_manager.transport_for_dialing(target)
                    if source is None or transport is None:
                        continue
                    try:
                        raw = await transport.dial_with_source(target, source)
                    except Exception as e:  # noqa: BLE001 - refused or unreachable: again
                        log.debug("punch to %s (attempt %d): %s", text, attempt + 1, e)
                        continue
                    try:
                        if initiator:
                            return await self.host.upgrade_outbound_connection(raw, want)
                        muxed = await self.host.upgrade_inbound_connection(raw, target)
                        if muxed.peer_id != want:
                            await muxed.close()
                            log.info("a punch reached %s, not %s", muxed.peer_id, peer)
                            return None
                        return self._conn_of(peer, muxed)
                    except Exception as e:  # noqa: BLE001 - the handshake failed
                        log.debug("punched connection to %s failed its handshake: %s", text, e)
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await raw.close()
                await trio.sleep(0.25)
        return None

    async def _punch_as_dialer(self, framed: Framed, peer: str, joined: relay.Connected) -> bool:
        stream = framed.stream
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            mine = self._mine(joined.observed)
            sent = trio.current_time()
            await _send(stream, punch.Candidates(mine))
            theirs = punch.decode(await framed.next())
            rtt = trio.current_time() - sent
        if not isinstance(theirs, punch.Candidates):
            raise punch.PunchError(f"a {type(theirs).__name__.upper()} where CANDIDATES belong")
        conn = None
        if mine and theirs.addrs and not self.unpunchable(peer):
            await _send(stream, punch.Sync())
            await trio.sleep(rtt / 2)  # when our SYN leaves, theirs does too
            conn = await self._simultaneous(theirs.addrs, peer, initiator=True)
        await _send(stream, punch.Outcome(conn is not None))
        if conn is None:
            self.punch_failed += 1
            self._punch_failed_at[peer] = trio.current_time()
            return False
        self.punched += 1
        log.info("connected to %s directly: the hole punch went through", peer)
        return True

    async def _punch_as_listener(self, framed: Framed, incoming: relay.Incoming) -> bool:
        stream = framed.stream
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            theirs = punch.decode(await framed.next())
            if not isinstance(theirs, punch.Candidates):
                raise punch.PunchError(f"a {type(theirs).__name__.upper()} where CANDIDATES belong")
            mine = self._mine(incoming.observed)
            await _send(stream, punch.Candidates(mine))
            said = punch.decode(await framed.next())
        if isinstance(said, punch.Outcome):
            return False
        conn = None
        outcome = None
        async with trio.open_nursery() as nursery:

            async def dial() -> None:
                nonlocal conn
                conn = await self._simultaneous(theirs.addrs, incoming.peer, initiator=False)

            if mine:
                nursery.start_soon(dial)
            with trio.fail_after(HANDSHAKE_TIMEOUT + PUNCH_TIMEOUT):
                outcome = punch.decode(await framed.next())
            if not isinstance(outcome, punch.Outcome) or not outcome.direct:
                nursery.cancel_scope.cancel()
        if not isinstance(outcome, punch.Outcome):
            raise punch.PunchError("no OUTCOME after SYNC")
        if outcome.direct and conn is not None:
            log.info("%s connected directly: the hole punch went through", incoming.peer)
            return True
        if conn is not None:  # it gave up just as ours got through: the circuit it is
            await conn.close()
        return False

    def report(self) -> api.RelaySlots:
        return api.RelaySlots(
            slots=tuple(str(a) for a in self.addrs()),
            relayed_peers=tuple(sorted(p for p in list(self.via) if self.relayed_via(p))),
            punched=self.punched,
            punch_failed=self.punch_failed,
        )
