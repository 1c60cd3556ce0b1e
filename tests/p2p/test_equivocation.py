"""A builder that tells two clients two stories is caught: real nodes on 127.0.0.1, a
builder played by this test (two logs of one key, each handed to one client)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from node.daemon import witness
from p2p import frame
from p2p.host import make_host, quiet_libp2p
from store.path import StorePath
from tests.p2p.nodes import NodeProc, Swarm, keys, policy
from tests.trust.claims import EVIL, GOOD, make
from trust import keyfile
from trust.claimlog import ClaimLog
from trust.key import SecretKey
from trust.logged import LoggedClaim

SP = StorePath("/nix/store", "7" * 32, "two-stories-1.0")


def _handed(log: ClaimLog, key: SecretKey, nar_hash: object) -> LoggedClaim:
    signed = make(key, path=SP, nar_hash=nar_hash)  # type: ignore[arg-type]
    log.append(signed.claim.encode())
    head = log.head()
    proved = log.prove(signed.claim.encode(), head)
    return LoggedClaim(signed, head, proved.index, proved.proof)


def _push(node: NodeProc, logged: LoggedClaim) -> None:
    """Hand one client a logged claim on `/ferry/logged/1`, as a builder does."""

    async def main() -> None:
        quiet_libp2p()
        host = make_host(create_new_key_pair())
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(node.addr))
                await host.connect(info)
                stream = await host.new_stream(info.peer_id, [TProtocol(witness.PUSH_PROTOCOL)])
                await stream.write(frame.encode(logged.encode()))
                await stream.close()
            finally:
                with trio.CancelScope(shield=True):
                    await host.close()

    trio.run(main)


def test_a_builder_telling_two_clients_two_stories_is_caught_and_a_third_node_refuses_it(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    key = keyfile.load_secret(str(k["builder"][0]))
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (c1,) = swarm.start("c1", policy=pol)
    (c2,) = swarm.start("c2", bootstrap=[c1.addr], policy=pol)
    c2.wait_log(f"connected to {c1.peer_id}")
    with (
        ClaimLog(str(tmp_path / "log-1"), key) as one,
        ClaimLog(str(tmp_path / "log-2"), key) as two,
    ):
        story_1, story_2 = _handed(one, key, GOOD), _handed(two, key, EVIL)
    assert story_1.index == story_2.index == 0 and story_1.head.head.root != story_2.head.head.root
    started = time.monotonic()
    _push(c1, story_1)
    _push(c2, story_2)
    # Each passed on what it was handed; each sees the other's story and holds a proof.
    for node in (c1, c2):
        node.wait_log(f"caught builder key {k['builder'][1]} telling two stories", timeout=30)
    took = time.monotonic() - started
    assert took < 30, took
    for node in (c1, c2):
        st = node.json("status")
        assert [c["key"] for c in st["caught"]] == [k["builder"][1]], st["caught"]
        listed = json.loads(node.ferry("trust", "caught", "--json").stdout)["caught"]
        assert [r["key"] for r in listed] == [k["builder"][1]]
        # Its claims count for nothing: the path is refused, saying why.
        r = node.ferry("fetch", str(SP))
        assert r.returncode == 3 and "caught telling two stories" in r.stderr, r.stderr
    # A node that joins later saw neither story: it is told the proof on connecting,
    # checks it, and refuses the key too, across a restart.
    (c3,) = swarm.start("c3", bootstrap=[c1.addr], policy=pol)
    c3.wait_log(f"caught builder key {k['builder'][1]} telling two stories", timeout=30)
    assert "CLAIMS" in c3.ferry("status").stdout or "LEAVES" in c3.ferry("status").stdout
    c3.stop()
    c3.start().wait_ready()
    assert [c["key"] for c in c3.json("status")["caught"]] == [k["builder"][1]]
    r = c3.ferry("fetch", str(SP))
    assert r.returncode == 3 and "caught telling two stories" in r.stderr, r.stderr
