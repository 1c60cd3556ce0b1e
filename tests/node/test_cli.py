"""`ferry` as a user runs it: exit codes, output, and no tracebacks on user mistakes."""

import json
import os
from pathlib import Path

import pytest

from store import nar
from tests.cli import ferry


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "hello-2.12"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_bytes(os.urandom(300_000))
    os.chmod(root / "bin" / "hello", 0o755)
    (root / "README").write_text("hi\n")
    return root


def test_manifest_json(tree: Path, nix) -> None:
    r = ferry("manifest", str(tree), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["nar_hash"] == "sha256:" + nix.hash_path(tree)
    assert (
        s["store_path"]
        == nix.run("nix-store", "--store", str(tree.parent / "s"), "--add", str(tree))
        .decode()
        .strip()
    )
    assert (s["entries"], s["files"], s["chunks"], s["unique_chunks"]) == (4, 2, 5, 5)
    assert s["file_bytes"] == 300_003 and len(s["manifest_digest"]) == 64


def test_manifest_text_and_nar_input(tree: Path, tmp_path: Path, nix) -> None:
    (tmp_path / "hello.nar").write_bytes(nix.dump(tree))
    a = ferry("manifest", str(tree))
    b = ferry("manifest", "--nar", str(tmp_path / "hello.nar"), "--name", "hello-2.12")
    c = ferry("manifest", "--nar", "-", "--name", "hello-2.12", input=nix.dump(tree))
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout == c.stdout
    assert "NarHash     sha256:" in a.stdout and "chunks      5 (5 unique" in a.stdout


def test_manifest_output_file_decodes(tree: Path, tmp_path: Path) -> None:
    from store.manifest import Manifest

    r = ferry("manifest", str(tree), "--json", "-o", str(tmp_path / "m.bin"))
    m = Manifest.decode((tmp_path / "m.bin").read_bytes())
    assert m.digest().hex() == json.loads(r.stdout)["manifest_digest"]


def test_manifest_of_store_path(nix_closure) -> None:
    r = ferry("manifest", nix_closure.top, "--store", str(nix_closure.store), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["store_path"] == nix_closure.top and len(s["references"]) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["manifest", "/no/such/dir"], "no such file or directory"),
        (["manifest", "/nix/store/notastorepath"], "is not <32"),
        (["manifest", "--nar", "/no/such.nar"], "no such file or directory"),
        (["manifest", ".", "--store-path", "/nix/store/x"], "is not <32"),
        (["manifest", ".", "--name", "has space"], "contains ' '"),
    ],
)
def test_user_mistakes_are_one_line_errors(args: list[str], message: str) -> None:
    r = ferry(*args)
    assert r.returncode == 1
    assert message in r.stderr and "ferry: error:" in r.stderr


def test_malformed_nar_names_offset_and_rule(tmp_path: Path) -> None:
    bad = nar.encode_bytes([nar.Directory(b""), nar.Regular(b"a", 0)])[:-10]
    (tmp_path / "bad.nar").write_bytes(bad)
    r = ferry("manifest", "--nar", str(tmp_path / "bad.nar"))
    assert r.returncode == 1 and "invalid NAR at byte" in r.stderr and "ends early" in r.stderr


def test_usage_errors_exit_2() -> None:
    assert ferry().returncode == 2
    assert ferry("manifest").returncode == 2
    assert ferry("manifest", "x", "--nar", "y").returncode == 2
    help_ = ferry("manifest", "--help")
    assert help_.returncode == 0 and "--nar FILE" in help_.stdout


def test_version_names_the_installed_release() -> None:
    from importlib.metadata import version

    r = ferry("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ferry {version('ferry')}"


def test_errors_are_json_under_json(tmp_path: Path) -> None:
    r = ferry("publish", str(tmp_path / "nothing"), "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert json.loads(r.stdout) == {
        "error": f"{tmp_path / 'nothing'}: no such file or directory",
        "exit": 1,
    }
    assert "ferry: error:" in r.stderr  # and the line a person reads


def test_the_node_logs_info_with_the_time(tmp_path: Path) -> None:
    import re

    from tests.p2p.nodes import NodeProc

    node = NodeProc(tmp_path, "n").start()
    try:
        node.wait_ready()
        running = [line for line in node.log if " running on " in line]
    finally:
        node.stop()
    # e.g. "2026-12-06 23:10:01,123 INFO node.cli.noderun: node 12D3... running on ..."
    assert running and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", running[0])


def test_a_second_node_on_a_running_nodes_port_is_refused(tmp_path: Path) -> None:
    from tests.p2p.nodes import NodeProc

    first = NodeProc(tmp_path, "first").start()
    try:
        first.wait_ready()
        listen = first.addr.split("/p2p/")[0]  # /ip4/127.0.0.1/tcp/PORT
        r = ferry(
            "node",
            "run",
            "--data-dir",
            str(tmp_path / "second"),
            "--listen",
            listen,
            "--no-mdns",
            "--gateway",
            "off",
        )
    finally:
        first.stop()
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"cannot listen on {listen}: Address already in use" in r.stderr
