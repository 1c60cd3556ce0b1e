"""The dial-back protocol's messages (strict, bounded) and its dial, against a real
py-libp2p listener and against things that are not one."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2p import frame, reachability
from p2p.reachability import MAX_PORTS, Ask, ReachabilityError, Verdict
from tests.p2p.hosts import two_hosts

ports = st.lists(st.integers(1, 65535), min_size=1, max_size=MAX_PORTS).map(tuple)
ips = st.ip_addresses().map(str)


def _payload(encoded: bytes) -> bytes:
    (payload,) = frame.FrameDecoder(reachability.CAP).feed(encoded)
    return payload


@given(ports)
def test_an_ask_decodes_to_itself(p: tuple[int, ...]) -> None:
    assert Ask.decode(_payload(Ask(p).encode())) == Ask(p)


@given(ips, st.lists(st.integers(1, 65535), max_size=MAX_PORTS).map(tuple))
def test_a_verdict_decodes_to_itself(ip: str, p: tuple[int, ...]) -> None:
    assert Verdict.decode(_payload(Verdict(ip, p).encode())) == Verdict(ip, p)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_reachability_error(raw: bytes) -> None:
    for decode in (Ask.decode, Verdict.decode):
        with contextlib.suppress(ReachabilityError):
            decode(raw)


@pytest.mark.parametrize(
    "value",
    [[], [0], [65536], [1, 2, 3, 4, 5], ["80"], [True], {"a": 1}, [1.5]],
)
def test_bad_asks_are_refused(value: object) -> None:
    with pytest.raises(ReachabilityError):
        Ask.decode(msgpack.packb(value))


@pytest.mark.parametrize(
    "value", [["not an ip", [1]], ["10.0.0.1"], ["10.0.0.1", [0]], [1, [1]], ["::1", [1] * 9]]
)
def test_bad_verdicts_are_refused(value: object) -> None:
    with pytest.raises(ReachabilityError):
        Verdict.decode(msgpack.packb(value))


async def test_a_libp2p_listener_answers_and_others_do_not() -> None:
    async with contextlib.AsyncExitStack() as stack:
        a, _ = await two_hosts(stack)
        port = int(a.get_addrs()[0].value_for_protocol("tcp"))
        assert await reachability.answers_as_libp2p("127.0.0.1", port)
        verdict = await reachability.check("127.0.0.1", Ask((port,)))
        assert verdict == Verdict("127.0.0.1", (port,))

    # A listener that is not libp2p (it says nothing), and a closed port.
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    quiet = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def hold() -> None:
            conn = await listener.accept()
            async with conn:
                await trio.sleep_forever()

        nursery.start_soon(hold)
        with trio.fail_after(reachability.DIAL_TIMEOUT + 2):
            assert not await reachability.answers_as_libp2p("127.0.0.1", quiet)
        nursery.cancel_scope.cancel()
    await listener.aclose()
    assert not await reachability.answers_as_libp2p("127.0.0.1", quiet)
