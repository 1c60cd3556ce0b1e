"""The store commands as a user runs them: publish, export, materialize, gc, verify,
store stats/list, root; disk full; the store held by another process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from node.local.store import LocalStore
from tests import trees
from tests.cli import ARGV, ferry
from tests.conftest import require

SP = "/nix/store/" + "c" * 32 + "-hello-2.12"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    trees.write(
        trees.Dir(
            {
                b"bin": trees.Dir({b"hello": trees.File(400_000, 1, True)}),
                b"share": trees.File(5_000, 2, False),
                b"link": trees.Link(b"bin/hello"),
            }
        ),
        tmp_path / "hello",
    )
    return tmp_path / "hello"


def test_publish_export_materialize(tree: Path, tmp_path: Path, nix) -> None:
    r = ferry("publish", str(tree), "--store-path", SP, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (
        out["store_path"] == SP and out["new_chunks"] == out["unique_chunks"] == 8 and out["root"]
    )
    again = json.loads(ferry("publish", str(tree), "--store-path", SP, "--json").stdout)
    assert again["new_chunks"] == 0
    assert ferry("export", SP, "-o", str(tmp_path / "x.nar")).returncode == 0
    assert (tmp_path / "x.nar").read_bytes() == nix.dump(tree)
    proc = subprocess.run([*ARGV, "export", SP], capture_output=True)
    assert proc.returncode == 0 and proc.stdout == nix.dump(tree)
    assert ferry("materialize", SP, str(tmp_path / "out")).returncode == 0
    assert nix.dump(tmp_path / "out") == nix.dump(tree)
    assert os.access(tmp_path / "out" / "bin" / "hello", os.X_OK)
    r = ferry("materialize", SP, str(tmp_path / "out"))
    assert r.returncode == 1 and "already exists" in r.stderr
    stats = json.loads(ferry("store", "stats", "--json").stdout)
    assert (stats["paths"], stats["complete_paths"], stats["unique_chunks"]) == (1, 1, 8)
    listing = json.loads(ferry("store", "list", "--json").stdout)
    assert [p["store_path"] for p in listing] == [SP] and listing[0]["nar_hash"] == out["nar_hash"]


def test_publish_a_nix_store_path_with_its_references(nix_closure) -> None:
    for p in nix_closure.paths:
        r = ferry("publish", p, "--store", str(nix_closure.store), "--json")
        assert r.returncode == 0, r.stderr
    listing = {p["store_path"]: p for p in json.loads(ferry("store", "list", "--json").stdout)}
    assert set(listing) == set(nix_closure.paths)
    # GC keeps the dependency while the top is a root, through the reference Nix reported.
    dep = next(p for p in nix_closure.paths if p != nix_closure.top)
    assert ferry("root", "remove", dep).returncode == 0
    assert json.loads(ferry("gc", "--json").stdout)["removed_paths"] == []
    assert ferry("root", "remove", nix_closure.top).returncode == 0
    assert sorted(json.loads(ferry("gc", "--json").stdout)["removed_paths"]) == sorted(
        nix_closure.paths
    )


def test_publish_with_key_records_a_claim(tree: Path, tmp_path: Path) -> None:
    assert ferry("trust", "keygen", "builder-a", "-o", str(tmp_path / "a")).returncode == 0
    r = ferry(
        "publish", str(tree), "--store-path", SP, "--key", str(tmp_path / "a.secret"), "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["claim"].startswith("builder-a:")
    with LocalStore(os.environ["FERRY_DATA_DIR"]) as store:
        (claim,) = store.claims(SP)
    assert (
        claim.valid()
        and claim.claim.manifest_digest.hex() == json.loads(r.stdout)["manifest_digest"]
    )


def test_user_mistakes_are_one_line_errors(tree: Path, tmp_path: Path) -> None:
    import socket

    (tmp_path / "bad.nar").write_bytes(b"nix-archive-1\x00\x00\x00garbage")
    weird = tmp_path / "weird"
    weird.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(weird / "sock"))
    cases = [
        (["publish", str(tmp_path / "nothing"), "--store-path", SP], "no such file or directory"),
        (
            ["publish", str(tree), "--store-path", "/nix/store/hello"],
            "is not <32 nix32 characters>",
        ),
        (["publish", "--nar", str(tmp_path / "bad.nar"), "--store-path", SP], "bad.nar: "),
        (["publish", str(weird), "--store-path", SP], "is a socket, not a file"),
        (["publish", str(tree), "--references", SP], "--references needs --store-path"),
        (
            ["publish", str(tree), "--store-path", SP, "--key", str(tmp_path / "nokey")],
            "no such file",
        ),
        (["export", SP], "is not in this ferry store"),
        (["export", "hello"], "not a full store path"),
        (["materialize", SP, str(tmp_path / "m")], "is not in this ferry store"),
        (["root", "remove", SP], "is not a GC root"),
        (["root", "add", SP], "is not in this ferry store"),
        # The slash a shell's completion leaves after a directory is not part of the path.
        (["export", SP + "/"], "is not in this ferry store"),
        (["root", "remove", SP + "/"], "is not a GC root"),
        # A mistyped data directory is not made into a new store to publish into.
        (
            ["publish", str(tree), "--store-path", SP, "--data-dir", str(tmp_path / "typo")],
            "no ferry data directory at",
        ),
        (["store", "stats", "--data-dir", str(tmp_path / "typo")], "`ferry init --data-dir"),
    ]
    try:
        for args, message in cases:
            r = ferry(*args)
            assert r.returncode == 1, (args, r.stderr)
            assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    finally:
        s.close()
    stats = json.loads(ferry("store", "stats", "--json").stdout)
    assert stats["paths"] == stats["unique_chunks"] == 0  # nothing was written
    assert not (tmp_path / "typo").exists()


def test_publishing_a_path_nix_lacks_says_so(nix_closure) -> None:
    missing = "/nix/store/" + "0" * 32 + "-never-built-1.0"
    r = ferry("publish", missing, "--store", str(nix_closure.store))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{missing} is not a valid path in the Nix store at {nix_closure.store}" in r.stderr
    assert "narHash" not in r.stderr


def test_export_refuses_a_terminal(tree: Path) -> None:
    import pty

    assert ferry("publish", str(tree), "--store-path", SP).returncode == 0
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(ARGV[0], [*ARGV, "export", SP])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert (
        os.waitstatus_to_exitcode(status) == 1
        and b"refusing to write a NAR to a terminal" in output
    )


def test_store_in_use_names_the_holder(tmp_path: Path) -> None:
    with LocalStore(str(tmp_path / "data")):
        r = ferry("store", "stats", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 1 and f"is in use by pid {os.getpid()}" in r.stderr


def test_verify_cli_reports_and_repairs(tree: Path) -> None:
    assert ferry("publish", str(tree), "--store-path", SP).returncode == 0
    with LocalStore(os.environ["FERRY_DATA_DIR"]) as store:
        rows = list(store.index.all_chunks())
        for row in rows[:2]:
            store.slab(row.slab).write(row.offset, b"\0\1\2")
    r = ferry("verify", "--json")
    report = json.loads(r.stdout)
    assert (
        r.returncode == 1
        and len(report["corrupt"]) == 2
        and report["bad_paths"][0]["store_path"] == SP
    )
    r = ferry("verify", "--repair")
    assert r.returncode == 1 and "corrupt chunks dropped" in r.stdout
    r = ferry("verify")
    assert r.returncode == 1 and "2 of its chunks are missing" in r.stdout
    assert ferry("publish", str(tree), "--store-path", SP).returncode == 0
    assert ferry("verify").returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path):
    require(os.geteuid() == 0, "mounting a size-limited tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_is_clear_and_leaves_the_store_usable(
    small_fs: Path, tmp_path: Path, tree: Path, nix
) -> None:
    data = str(small_fs / "ferry")
    os.mkdir(data)  # as `ferry init` makes it: publish does not make a data directory
    big = tmp_path / "big"
    trees.write(
        trees.Dir({f"f{i}".encode(): trees.File(1_000_000, i, False) for i in range(10)}), big
    )
    for batch in (
        "100000000",
        "500000",
    ):  # the failure before any batch commits, and after some did
        r = subprocess.run(
            [*ARGV, "publish", str(big), "--store-path", SP, "--data-dir", data],
            capture_output=True,
            text=True,
            env={**os.environ, "FERRY_TEST_BATCH_BYTES": batch},
        )
        assert r.returncode == 1 and "no space left on the device" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        with LocalStore(data) as store:
            assert store.verify().ok
            s = store.stats()
            assert (s.paths, s.unique_chunks) == (0, 0) and s.slab_disk_bytes == 0
    # Still usable: a path that fits goes in and comes out intact.
    assert ferry("publish", str(tree), "--store-path", SP, "--data-dir", data).returncode == 0
    proc = subprocess.run([*ARGV, "export", SP, "--data-dir", data], capture_output=True)
    assert proc.stdout == nix.dump(tree)


def test_references_before_the_path_leave_it_the_path(tree: Path) -> None:
    ref = "/nix/store/" + "d" * 32 + "-lib-1.0"
    r = ferry("publish", "--references", ref, str(tree), "--store-path", SP, "--json")
    assert r.returncode == 0, r.stderr
    with LocalStore(os.environ["FERRY_DATA_DIR"]) as store:
        reader = store.reader()
        try:
            state = reader.path_state(SP)
        finally:
            reader.close()
    assert state is not None and [str(p) for p in state[0].references] == [ref]
    # With nothing that could be the PATH, the usual usage error.
    r = ferry("publish", "--references", ref, "--store-path", SP)
    assert r.returncode == 2 and "PATH --nar is required" in r.stderr


def test_a_path_without_its_references_warns_and_closure_publishes_them_first(
    nix_closure,
) -> None:
    dep = next(p for p in nix_closure.paths if p != nix_closure.top)
    alone = ferry("publish", nix_closure.top, "--store", str(nix_closure.store))
    assert alone.returncode == 0, alone.stderr
    assert "warning: 1 of its references are not in this ferry store" in alone.stderr
    assert dep in alone.stderr and "--closure" in alone.stderr
    r = ferry("publish", "--closure", nix_closure.top, "--store", str(nix_closure.store), "--json")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    # The path published already is not published again; its reference is.
    out = json.loads(r.stdout)
    assert out["published"] == [dep] and out["already"] == 1
    listing = {p["store_path"] for p in json.loads(ferry("store", "list", "--json").stdout)}
    assert listing == set(nix_closure.paths)
    r = ferry("publish", "--closure", str(nix_closure.root))  # not a store path
    assert r.returncode == 1 and "--closure needs a Nix store path" in r.stderr
