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

from p2p import claimwire, frame, witnesswire
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
    _send(node, witnesswire.PUSH_PROTOCOL, frame.encode(logged.encode()))


def _send(node: NodeProc, protocol: str, data: bytes) -> None:
    """Open one stream to the node and write `data` on it, from a host of the test's."""

    async def main() -> None:
        quiet_libp2p()
        host = make_host(create_new_key_pair())
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(node.addr))
                await host.connect(info)
                stream = await host.new_stream(info.peer_id, [TProtocol(protocol)])
                await stream.write(data)
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
    # Restarted, it serves the log of the key it published with (it kept the key file's path).
    builder.stop()
    builder.start().wait_ready()
    pol = policy(tmp_path, [k["builder"][1]], threshold=1)
    (client,) = swarm.start("client", bootstrap=[builder.addr], policy=pol)
    client.wait_log(f"connected to {builder.peer_id}")
    r = client.ferry("trust", "audit", k["builder"][1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "size    3 entries (claims, revocations) for 3 store paths" in r.stdout
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


def _tree(tmp_path: Path, name: str, content: bytes) -> Path:
    tree = tmp_path / name
    tree.mkdir()
    (tree / "f").write_bytes(content)
    return tree


def test_a_builder_revokes_a_claim_and_no_node_counts_it_and_a_rebuild_corrects_itself(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    secret, public = str(k["builder"][0]), k["builder"][1]
    pol = policy(tmp_path, [public], threshold=1)
    (builder,) = swarm.start("builder")
    (client,) = swarm.start("client", bootstrap=[builder.addr], policy=pol)
    client.wait_log(f"connected to {builder.peer_id}")
    kept, mistake, rebuilt = ("/nix/store/" + f"{i}" * 32 + f"-pkg-{i}" for i in (1, 2, 3))
    for sp, content in ((kept, b"kept"), (mistake, b"mistake"), (rebuilt, b"first build")):
        builder.json(
            "publish", str(_tree(tmp_path, sp[-5:], content)), "--store-path", sp, "--key", secret
        )
    client.wait_log("learned", count=1)
    # Each new head is shown consistent with the one before, by the builder, when asked.
    client.wait_log(
        f"heads of {public}'s log: its first 2 leaves are a prefix of its 3", timeout=30
    )

    # The builder takes back one claim: the revocation goes into its log, and out.
    r = builder.ferry("trust", "revoke-claim", mistake, "--key", secret)
    assert r.returncode == 0, r.stderr
    assert (
        f"revoked  {mistake}: the claim of " in r.stdout
        and "at leaf 3 of builder's log" in r.stdout
    )
    client.wait_log(f"revoked its claim for {mistake}", timeout=30)
    r = client.ferry("fetch", mistake)
    assert (
        r.returncode == 3 and "not counted, from claims their builders revoked: builder" in r.stderr
    ), r.stderr
    assert client.ferry("fetch", kept).returncode == 0  # its other claims still count
    assert "revoked  1 claims taken back by their builders" in client.ferry("status").stdout
    # Twice is a mistake of the user's: said in one line, exit 3.
    r = builder.ferry("trust", "revoke-claim", mistake, "--key", secret)
    assert (
        r.returncode == 3
        and "holds no claim" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )

    # A rebuild that came out different: the node revokes its earlier claim by itself,
    # in the open, so that the new one counts and nobody takes it for a second story.
    second = builder.json(
        "publish",
        str(_tree(tmp_path, "rebuilt-2", b"second build")),
        "--store-path",
        rebuilt,
        "--key",
        secret,
    )
    builder.wait_log(f"{rebuilt}: signed another result than its earlier claim")
    client.wait_log(f"revoked its claim for {rebuilt}", timeout=30)
    fetched = client.json("fetch", rebuilt)
    audit = client.json("trust", "audit", public)
    assert audit["problems"] == [] and audit["size"] == 6, audit
    (got,) = fetched["fetched"]
    assert (got["nar_hash"], got["signers"]) == (second["nar_hash"], ["builder"]), fetched
    assert not [x for x in client.log if "caught builder key" in x]

    # A node that joins later is told the revocations on connecting, and keeps them.
    (late,) = swarm.start("late", bootstrap=[client.addr], policy=pol)
    late.wait_log(f"revoked its claim for {mistake}", timeout=30)
    late.stop()
    late.start().wait_ready()
    r = late.ferry("fetch", mistake)
    assert r.returncode == 3 and "claims their builders revoked" in r.stderr, r.stderr


def test_heads_of_two_sizes_are_asked_of_the_builder_and_a_fork_it_hid_is_caught(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    secret, public = str(k["builder"][0]), k["builder"][1]
    key = keyfile.load_secret(secret)
    (builder,) = swarm.start("builder")
    # The builder's log holds two claims already (signed before anyone listened: no
    # gossip of them), and a branch of it that shares the first and then differs is
    # handed to the client alone. The client never sees an index or a size both share.
    builder.stop()
    real_dir, branch = builder.data_dir / "claimlog", tmp_path / "branch"
    with ClaimLog(str(real_dir), key) as real:
        for i in (0, 1):
            real.append(
                make(key, path=StorePath("/nix/store", f"{i}" * 32, f"pkg-{i}")).claim.encode()
            )
        first = real.leaf(0)
    branch.mkdir()
    name = key.public.key.hex()
    shutil.copy(real_dir / f"{name}.id", branch / f"{name}.id")
    with ClaimLog(str(branch), key) as forked:
        forked.append(first)
        story = _handed(forked, key, EVIL)
    builder.start().wait_ready()
    assert (story.index, story.head.head.size) == (1, 2)
    pol = policy(tmp_path, [public], threshold=1)
    (client,) = swarm.start("client", bootstrap=[builder.addr], policy=pol)
    client.wait_log(f"connected to {builder.peer_id}")
    _push(client, story)
    client.wait_log("learned 1 new claims from")
    # The builder's next claim comes with its head of 3 leaves: the client asks it to show
    # its head of 2 is a prefix of that one, and the builder's own answer is the proof.
    sp = "/nix/store/" + "2" * 32 + "-pkg-2"
    builder.json("publish", str(_tree(tmp_path, "t2", b"2")), "--store-path", sp, "--key", secret)
    client.wait_log(
        f"caught builder key {public} telling two stories (FORK, from {builder.peer_id})",
        timeout=30,
    )
    r = client.ferry("fetch", sp)
    assert r.returncode == 3 and "caught telling two stories" in r.stderr, r.stderr


def test_a_policy_that_requires_logs_asks_peers_for_them_and_pins_a_key_to_one_log(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder", "elder")
    secret, public = str(k["builder"][0]), k["builder"][1]
    (builder,) = swarm.start("builder", config=f'publish_key = "{secret}"\n')
    paths = ["/nix/store/" + f"{i}" * 32 + f"-pkg-{i}" for i in (1, 2)]
    for sp in paths:
        builder.json(
            "publish",
            str(_tree(tmp_path, sp[-5:], sp.encode())),
            "--store-path",
            sp,
            "--key",
            secret,
        )
    # Its claims were signed before it kept a logbook (an older version): it makes their
    # logged forms from its log and store when asked.
    builder.stop()
    for f in builder.data_dir.glob("logbook.sqlite*"):
        f.unlink()
    builder.start().wait_ready()
    strict = tmp_path / "strict.toml"

    def write_policy(pin: str | None = None) -> None:
        text = (
            f"trusted = {json.dumps([public, k['elder'][1]])}\nthreshold = 1\nrequire_logs = true\n"
        )
        if pin is not None:
            text += f'[keys."builder"]\nlog = "{pin}"\n'
        strict.write_text(text)

    write_policy()
    # The client hears no gossip: it gets the claims plain, from the builder's claim
    # answers, and asks where they are logged.
    (client,) = swarm.start(
        "client", bootstrap=[builder.addr], policy=strict, config="gossip = false\n"
    )
    client.wait_log(f"connected to {builder.peer_id}")
    fetched = client.json("fetch", paths[0])
    assert fetched["fetched"][0]["signers"] == ["builder"], fetched
    client.wait_log("where 1 claims are logged: 1 shown")
    # A trusted key whose claims were never logged (an older builder) counts for nothing.
    elder = keyfile.load_secret(str(k["elder"][0]))
    unlogged = StorePath("/nix/store", "9" * 32, "from-an-older-builder")
    signed = make(elder, path=unlogged)
    _send(client, "/ferry/claims/1", claimwire.encode(claimwire.Push((signed.encode(),))))
    client.wait_log("learned 1 new claims from")
    r = client.ferry("fetch", str(unlogged))
    assert r.returncode == 3, r.stdout + r.stderr
    assert (
        "not counted, from claims no peer showed in their builder's log (require_logs): elder"
        in r.stderr
    )
    # Pinned to another log than the builder's, its claims do not count; pinned to the
    # one `ferry trust audit` names, they do.
    write_policy("0" * 32)
    assert client.ferry("node", "reload").returncode == 0
    r = client.ferry("fetch", paths[1])
    assert r.returncode == 3, r.stdout + r.stderr
    assert (
        "not counted, from claims in another log than the one the policy pins: builder" in r.stderr
    )
    audit = client.json("trust", "audit", public)
    assert len(audit["log"]) == 32 and audit["log"] in client.ferry("trust", "audit", public).stdout
    write_policy(audit["log"])
    assert client.ferry("node", "reload").returncode == 0
    fetched = client.json("fetch", paths[1])
    assert fetched["fetched"][0]["signers"] == ["builder"], fetched
