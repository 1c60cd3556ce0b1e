"""A builder that tells two clients two stories is caught: real nodes on 127.0.0.1, a
builder played by this test (two logs of one key, each handed to one client)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2p import frame, witnesswire
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
                stream = await host.new_stream(info.peer_id, [TProtocol(witnesswire.PUSH_PROTOCOL)])
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
    with ClaimLog(str(tmp_path / "log-1"), key):
        pass  # the builder's log, and its id
    shutil.copytree(tmp_path / "log-1", tmp_path / "log-2")  # forked: one log, two branches
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
    assert f"caught   {k['builder'][1]} told two stories (" in c3.ferry("status").stdout
    c3.stop()
    c3.start().wait_ready()
    assert [c["key"] for c in c3.json("status")["caught"]] == [k["builder"][1]]
    r = c3.ferry("fetch", str(SP))
    assert r.returncode == 3 and "caught telling two stories" in r.stderr, r.stderr


def test_ferry_trust_audit_reads_a_builders_log_and_finds_a_head_it_contradicts(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    key = keyfile.load_secret(str(k["builder"][0]))
    (builder,) = swarm.start("builder")
    for i in range(3):
        tree = tmp_path / f"tree-{i}"
        tree.mkdir()
        (tree / "f").write_bytes(b"build %d" % i)
        sp = "/nix/store/" + f"{i}" * 32 + f"-pkg-{i}"
        builder.json("publish", str(tree), "--store-path", sp, "--key", str(k["builder"][0]))
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (client,) = swarm.start("client", bootstrap=[builder.addr], policy=pol)
    client.wait_log(f"connected to {builder.peer_id}")
    r = client.ferry("trust", "audit", k["builder"][1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "size    3 claims for 3 store paths" in r.stdout
        and "ok: the log holds together" in r.stdout
    )
    audit = json.loads(client.ferry("trust", "audit", k["builder"][1], "--json").stdout)
    assert (audit["found"], audit["source"], audit["size"], audit["problems"]) == (
        True,
        builder.peer_id,
        3,
        [],
    )
    # Someone hands the client a head of the same key whose first leaf is another claim:
    # the builder's log, read whole, contradicts it.
    forked = tmp_path / "forked"
    forked.mkdir()
    log_id = f"{key.public.key.hex()}.id"  # the builder's log, forked from its start
    shutil.copy(builder.data_dir / "claimlog" / log_id, forked / log_id)
    with ClaimLog(str(forked), key) as branch:
        _push(client, _handed(branch, key, EVIL))
    client.wait_log("learned 1 new claims from")  # after the witness saw its head
    r = client.ferry("trust", "audit", k["builder"][1])
    assert r.returncode == 2, r.stdout + r.stderr
    # The client either kept that head (the log contradicts it) or had the builder's own
    # head of size 1 already (it caught the fork at once); the audit says which.
    assert ("a head of size 1" in r.stdout and "the log was rewritten" in r.stdout) or (
        "holds a proof that the key told two stories (FORK" in r.stdout
    ), r.stdout
    # Unknown logs and bad keys: said in one line.
    other = keys(tmp_path, "nobody")["nobody"][1]
    r = client.ferry("trust", "audit", other)
    assert r.returncode == 1 and "no connected peer serves" in r.stdout
    r = client.ferry("trust", "audit", "not-a-key")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
