"""Builders publish by themselves: a node watching its Nix store, and Nix's post-build
hook, publish what real Nix builds, and a client fetches it under a quorum policy
without anyone running `ferry publish`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli import ferry
from tests.conftest import NIX_MK, Nix
from tests.p2p.nodes import NodeProc, Swarm, keys, policy

pytestmark = pytest.mark.slow(seconds=40)


def chain_nix(tag: str) -> str:
    """Three paths, each referring to the next: lib <- mid <- app."""
    return (
        "let"
        + NIX_MK
        + """
  lib = mk "lib-TAG" "mkdir $out; echo lib TAG > $out/data";
  mid = mk "mid-TAG" "mkdir $out; echo ${lib} > $out/ref";
in mk "app-TAG" "mkdir $out; echo ${mid} > $out/ref; echo app > $out/x"
""".replace("TAG", tag)
    )


def build(nix: Nix, store: Path, expr: Path, *options: str) -> str:
    return (
        nix.run("nix-build", "--store", str(store), str(expr), "--no-out-link", *options)
        .decode()
        .strip()
    )


def closure(nix: Nix, store: Path, path: str) -> list[str]:
    return sorted(nix.run("nix-store", "--store", str(store), "-qR", path).decode().split())


def wait_published(node: NodeProc, paths: list[str], timeout: float = 60.0) -> set[str]:
    """Wait until the node's store lists `paths`; each step waits for its next
    "published" log line (the node logs each batch it publishes)."""
    deadline = time.monotonic() + timeout
    while True:
        # Counted before the listing: a batch published between the two must not be
        # waited for again.
        seen = len([x for x in node.log if "published" in x])
        listed = {p["store_path"] for p in node.json("store", "list")}
        if listed >= set(paths) or time.monotonic() > deadline:
            return listed
        node.wait_log("published", count=seen + 1, timeout=max(0.1, deadline - time.monotonic()))


def _at_namespace_root(*argv: str, input: str | None = None) -> str:
    """Run `argv` with the root Nix's hook gets: this mount namespace's own root."""
    proc = subprocess.run(
        ["nsenter", f"--mount=/proc/{os.getpid()}/ns/mnt", *argv],
        input=input,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def runnable_by_nix(script: Path) -> tuple[Path, Path | None]:
    """A path Nix 2.8 can run as `post-build-hook` that runs `script`, and the file to
    remove afterwards, if one was made.

    As root, Nix 2.8 runs the hook after going back to the mount namespace it started in
    (util.cc: runProgram2 -> restoreProcessContext -> setns), and setns sets the root to
    that namespace's own root: in a chroot (CI's fresh Debian root), the host's, where
    our files are not. There the hook is a trampoline in the host's /tmp that chroots
    back into ours. Outside a chroot, as on a real builder, it is the script itself."""
    if os.geteuid() != 0:
        return script, None
    here = os.stat("/")
    if _at_namespace_root("stat", "-c", "%d:%i", "/").strip() == f"{here.st_dev}:{here.st_ino}":
        return script, None
    with open("/proc/self/mountinfo") as f:
        root = [line.split()[3] for line in f if line.split()[4] == "/"][-1]
    trampoline = f"/tmp/ferry-test-hook-{os.getpid()}-{script.parent.name}"
    _at_namespace_root(
        "sh",
        "-c",
        f"cat > {trampoline} && chmod 755 {trampoline}",
        input=f"#!/bin/sh\nexec chroot {root} {script}\n",
    )
    return Path(trampoline), Path(trampoline)


def signers(node: NodeProc, store_path: str) -> list[str]:
    db = sqlite3.connect(node.data_dir / "index.sqlite")
    try:
        rows = db.execute("SELECT builder FROM claims WHERE store_path = ?", (store_path,))
        return sorted(r[0].split(":")[0] for r in rows)
    finally:
        db.close()


def test_watching_builders_publish_a_closure_a_client_fetches_under_quorum(
    nix: Nix, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder-a", "builder-b")
    expr = tmp_path / "chain.nix"
    expr.write_text(chain_nix("w1"))
    stores = {n: tmp_path / f"nix-{n}" for n in ("builder-a", "builder-b")}
    builders = swarm.start(
        "builder-a",
        config=f'watch_store = true\nnix_store = "{stores["builder-a"]}"\n'
        f'publish_key = "{k["builder-a"][0]}"\n',
    ) + swarm.start(
        "builder-b",
        config=f'watch_store = true\nnix_store = "{stores["builder-b"]}"\n'
        f'publish_key = "{k["builder-b"][0]}"\n',
    )
    # No Nix database yet (no build has run in these stores): the watcher waits for it.
    for b in builders:
        b.wait_log("watching")
    pol = policy(tmp_path, [k["builder-a"][1], k["builder-b"][1]], threshold=2)
    (client,) = swarm.start("client", bootstrap=[b.addr for b in builders], policy=pol)

    app = build(nix, stores["builder-a"], expr)
    assert build(nix, stores["builder-b"], expr) == app
    paths = closure(nix, stores["builder-a"], app)
    assert len(paths) == 3
    for b in builders:
        assert wait_published(b, paths) == set(paths)

    fetched = client.json("fetch", "--closure", app)
    assert sorted(p["store_path"] for p in fetched["fetched"]) == paths
    for p in fetched["fetched"]:
        assert sorted(p["signers"]) == ["builder-a", "builder-b"]
    # What the client holds is what Nix built, byte for byte.
    exported = client.ferry("export", app, "-o", str(tmp_path / "app.nar"))
    assert exported.returncode == 0, exported.stderr
    nar = nix.dump(str(stores["builder-a"]) + app)
    assert (tmp_path / "app.nar").read_bytes() == nar


def test_watching_resumes_after_a_restart_and_skips_what_was_there(
    nix: Nix, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    store = tmp_path / "nix"
    before, after = tmp_path / "before.nix", tmp_path / "after.nix"
    before.write_text(chain_nix("old"))
    after.write_text(chain_nix("new"))
    old = build(nix, store, before)  # in the store before the watcher first looked
    config = f'watch_store = true\nnix_store = "{store}"\npublish_key = "{k["builder"][0]}"\n'
    (node,) = swarm.start("builder", config=config)
    node.wait_log("publishing every path Nix registers from now on")
    assert node.stop() == 0
    new = build(nix, store, after)  # while the node is stopped
    node.start().wait_ready()
    node.wait_log("from where the node stopped")
    listed = wait_published(node, closure(nix, store, new))
    assert listed == set(closure(nix, store, new))
    assert old not in listed


def test_post_build_hook_publishes_a_real_build_and_costs_it_nothing(
    nix: Nix, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    store = tmp_path / "nix"
    (node,) = swarm.start(
        "builder", config=f'nix_store = "{store}"\npublish_key = "{k["builder"][0]}"\n'
    )
    r = ferry("init", "--data-dir", str(node.data_dir))
    assert r.returncode == 0, r.stderr
    script = node.data_dir / "post-build-hook"
    assert f"post-build-hook = {script}" in r.stdout
    # Nix runs the hook; a wrapper records how long ferry's part took.
    times = tmp_path / "hook-times"
    timed = tmp_path / "timed-hook"
    timed.write_text(
        "#!/bin/sh\n"
        f'echo "start $(date +%s.%N) out=[$OUT_PATHS] drv=$DRV_PATH" >> {times}\n'
        f"{script} || echo failed >> {times}\n"
        f'echo "end $(date +%s.%N)" >> {times}\n'
    )
    timed.chmod(0o755)
    expr = tmp_path / "chain.nix"
    expr.write_text(chain_nix("hook"))
    hook, made = runnable_by_nix(timed)
    try:
        app = build(nix, store, expr, "--option", "post-build-hook", str(hook))
    finally:
        if made is not None:
            _at_namespace_root("rm", "-f", str(made))
    paths = closure(nix, store, app)

    lines = times.read_text().splitlines()
    assert "failed" not in lines
    starts = [float(x.split()[1]) for x in lines if x.startswith("start")]
    ends = [float(x.split()[1]) for x in lines if x.startswith("end")]
    assert len(starts) == len(ends) == 3  # once per derivation built
    spent = [e - s for s, e in zip(starts, ends, strict=True)]
    assert max(spent) < 0.2, spent
    assert wait_published(node, paths) == set(paths)
    assert signers(node, app) == ["builder"]


def test_the_hook_never_fails_a_build_and_a_stopped_node_catches_up(
    nix: Nix, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    store = tmp_path / "nix"
    expr = tmp_path / "one.nix"
    expr.write_text("let" + NIX_MK + 'in mk "solo-1" "echo solo > $out"\n')
    out = build(nix, store, expr)
    data = tmp_path / "node"
    r = ferry("init", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    # Nix 2.8 gives the hook an empty OUT_PATHS and DRV_PATH only.
    drv = nix.run("nix-store", "--store", str(store), "-qd", out).decode().strip()
    hook = subprocess_env(data / "post-build-hook", {"OUT_PATHS": "", "DRV_PATH": drv})
    assert hook.returncode == 0
    assert "no node is running" in hook.stderr and "when it starts" in hook.stderr
    # No data directory at all: a warning, and the build stands.
    lost = ferry("post-build-hook", "--data-dir", str(tmp_path / "nope"), env={"OUT_PATHS": out})
    assert lost.returncode == 0 and "no ferry data directory" in lost.stderr
    # By hand, outside Nix: a usage error.
    r = ferry("post-build-hook", "--data-dir", str(data), env={"OUT_PATHS": "", "DRV_PATH": ""})
    assert r.returncode == 2 and "Nix runs this after a build" in r.stderr

    node = NodeProc(
        tmp_path,
        "node",
        config=f'nix_store = "{store}"\npublish_key = "{k["builder"][0]}"\n',
    )
    try:
        node.start().wait_ready()
        assert wait_published(node, [out]) == {out}
        assert signers(node, out) == ["builder"]
    finally:
        node.stop()


def subprocess_env(script: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    import subprocess

    proc = subprocess.run(
        [str(script)], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_publish_all_and_closure_through_the_node_and_without(
    nix_closure, swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder")
    data = tmp_path / "direct"
    data.mkdir()
    store = str(nix_closure.store)
    r = ferry(
        "publish",
        "--all",
        "--store",
        store,
        "--key",
        str(k["builder"][0]),
        "--json",
        "--data-dir",
        str(data),
    )
    assert r.returncode == 0, r.stderr
    direct = json.loads(r.stdout)
    assert set(direct["published"]) == set(nix_closure.paths) and direct["already"] == 0
    # Again: nothing to do.
    r = ferry(
        "publish",
        "--all",
        "--store",
        store,
        "--json",
        "--data-dir",
        str(data),
        "--key",
        str(k["builder"][0]),
    )
    assert json.loads(r.stdout)["published"] == []
    assert json.loads(r.stdout)["already"] == len(nix_closure.paths)

    (node,) = swarm.start("node")
    r = node.ferry("publish", "--closure", nix_closure.top, "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    through = json.loads(r.stdout)
    assert through["published"][-1] == nix_closure.top
    assert set(through["published"]) == set(nix_closure.paths)
    r = node.ferry("publish", "--all", nix_closure.top, "--store", store)
    assert r.returncode == 2 and "give no PATH" in r.stderr
    missing = "/nix/store/" + "a" * 32 + "-absent-1"
    r = node.ferry("publish", "--closure", missing, "--store", store)
    assert r.returncode == 1 and "is not a valid path in the Nix store at" in r.stderr
    # A single path whose reference the node lacks: the warning, through the node too.
    (lone,) = swarm.start("lone")
    r = lone.ferry("publish", nix_closure.top, "--store", store)
    assert r.returncode == 0, r.stderr
    assert "warning: 1 of its references are not in this ferry store" in r.stderr


def test_the_hooks_wake_frame_is_the_control_request() -> None:
    import msgpack

    from node.daemon import api, posthook
    from p2p import frame

    request = api.encode_request(api.OutboxRequest())
    assert frame.encode(msgpack.packb(request, use_bin_type=True)) == posthook.WAKE_FRAME
