"""`ferry trust` as scripts use it: the exit codes (0 trusted, 1 insufficient,
2 conflict, 3 bad input), --json, and one-line errors for every kind of bad input."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from store.hash import Hash
from store.narinfo import NarInfo
from store.path import StorePath
from tests.cli import ferry
from trust import keyfile, signature
from trust.claim import SignedClaim
from trust.key import SecretKey

STORE_PATH = "/nix/store/" + "7" * 32 + "-hello-2.12"
DEP = "/nix/store/" + "8" * 32 + "-glibc-2.40"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys a, b, c (trusted, 2 of 3), an outsider m, a built tree, honest and lying claims."""
    d = tmp_path_factory.mktemp("trust")
    for n in "abcm":
        r = ferry("trust", "keygen", f"builder-{n}", "-o", str(d / n))
        assert r.returncode == 0, r.stderr
    out = d / "out"
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "hello").write_bytes(os.urandom(200_000))
    (out / "share").write_text("hello\n")
    for n in "abcm":
        r = ferry(
            "trust",
            "claim",
            str(out),
            "--key",
            str(d / f"{n}.secret"),
            "--store-path",
            STORE_PATH,
            "--references",
            DEP,
            "-o",
            str(d / f"{n}.claim"),
        )
        assert r.returncode == 0, r.stderr
    (out / "share").write_text("hello, with a backdoor\n")
    r = ferry(
        "trust",
        "claim",
        str(out),
        "--key",
        str(d / "c.secret"),
        "--store-path",
        STORE_PATH,
        "--references",
        DEP,
        "-o",
        str(d / "c-lie.claim"),
    )
    assert r.returncode == 0, r.stderr
    keys = "".join(f'  "{(d / f"{n}.public").read_text()}",\n' for n in "abc")
    (d / "policy.toml").write_text(f"trusted = [\n{keys}]\nthreshold = 2\n")
    (d / "majority.toml").write_text(
        f'trusted = [\n{keys}]\nthreshold = 2\non_conflict = "majority"\n'
    )
    return d


def test_keygen_files_and_output(world: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(world / "a.secret").st_mode) == 0o600
    r = ferry("trust", "keygen", "ci-builder-1", "--json", cwd=tmp_path)  # default prefix: the name
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["public_key"] == (tmp_path / "ci-builder-1.public").read_text()
    assert info["secret_file"] == "ci-builder-1.secret"
    r = ferry("trust", "pubkey", str(tmp_path / "ci-builder-1.secret"))
    assert (r.returncode, r.stdout.strip()) == (0, info["public_key"])
    assert (
        ferry("trust", "pubkey", str(tmp_path / "ci-builder-1.secret"), "--json").stdout.count(
            '"name"'
        )
        == 1
    )
    # Never overwrites a key.
    r = ferry("trust", "keygen", "ci-builder-1", cwd=tmp_path)
    assert r.returncode == 3 and "already exists" in r.stderr
    assert json.loads(ferry("trust", "keygen", "x", "--json", cwd=tmp_path).stdout)["name"] == "x"


def test_nix_signs_with_a_key_ferry_made(world: Path, nix, nix_closure, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(nix_closure.store, store, symlinks=True)
    nix_cmd = ("nix", "--extra-experimental-features", "nix-command")
    nix.run(
        *nix_cmd,
        "store",
        "sign",
        "--store",
        str(store),
        "--key-file",
        str(world / "a.secret"),
        nix_closure.top,
    )
    (info,) = json.loads(
        nix.run(*nix_cmd, "path-info", "--json", "--sigs", "--store", str(store), nix_closure.top)
    )
    narinfo = NarInfo(
        StorePath.decode(info["path"]),
        "nar/x.nar",
        Hash.decode(info["narHash"]),
        info["narSize"],
        tuple(StorePath.decode(r) for r in info["references"]),
        sigs=tuple(info["signatures"]),
    )
    assert signature.signers(narinfo, [keyfile.load_public(str(world / "a.public"))]) == (
        "builder-a",
    )


def test_claim_contents(world: Path) -> None:
    s = SignedClaim.decode((world / "a.claim").read_bytes())
    assert str(s.claim.store_path) == STORE_PATH and [str(r) for r in s.claim.references] == [DEP]
    assert s.builder.encode() == (world / "a.public").read_text()
    assert s.claim_valid() and s.nix_valid()
    r = ferry("manifest", str(world / "out"), "--store-path", STORE_PATH, "--json")
    # The lie changed the tree after a.claim was made, so compare with a's own NarHash.
    assert json.loads(r.stdout)["nar_hash"] != str(s.claim.nar_hash)


def test_verify(world: Path, tmp_path: Path) -> None:
    r = ferry("trust", "verify", *(str(world / f"{n}.claim") for n in "abcm"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" ok ") >= 4 and "builder-m" in r.stdout
    data = bytearray((world / "a.claim").read_bytes())
    data[-1] ^= 1  # the Nix signature's last byte
    (tmp_path / "bad.claim").write_bytes(bytes(data))
    r = ferry("trust", "verify", str(world / "a.claim"), str(tmp_path / "bad.claim"), "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["valid"] is False
    assert [(c["claim_signature_ok"], c["nix_signature_ok"]) for c in report["claims"]] == [
        (True, True),
        (True, False),
    ]


def decide(world: Path, *claims: str, policy: str = "policy.toml", json_out: bool = False):
    args = [
        "trust",
        "decide",
        STORE_PATH,
        "--policy",
        str(world / policy),
        *(str(world / c) for c in claims),
    ]
    return ferry(*args, *(["--json"] if json_out else []))


def test_decide_verdicts_and_exit_codes(world: Path) -> None:
    r = decide(world, "a.claim")
    assert (
        r.returncode == 1
        and "insufficient: 1 of the 2" in r.stdout
        and "builder-b, builder-c" in r.stdout
    )
    r = decide(world, "a.claim", "b.claim")
    assert r.returncode == 0 and "trusted: 2 of 3 builders agree" in r.stdout
    r = decide(world, "a.claim", "b.claim", "c-lie.claim")
    assert r.returncode == 2 and "conflict" in r.stdout
    lie = SignedClaim.decode((world / "c-lie.claim").read_bytes())
    assert f"{lie.claim.nar_hash} / {lie.claim.manifest_digest.hex()[:16]}: builder-c" in r.stdout
    r = decide(world, "a.claim", "b.claim", "c-lie.claim", policy="majority.toml")
    assert r.returncode == 0 and "warning: builder-c signed a different result" in r.stdout
    # Outsiders and repeats do not count.
    r = decide(world, "a.claim", "m.claim", "a.claim", "a.claim")
    assert r.returncode == 1
    assert (
        "ignored: key is not in the policy" in r.stdout
        and r.stdout.count("ignored: key already counted") == 2
    )


def test_decide_json(world: Path) -> None:
    r = decide(world, "a.claim", "b.claim", "m.claim", json_out=True)
    out = json.loads(r.stdout)
    a = SignedClaim.decode((world / "a.claim").read_bytes())
    assert (
        r.returncode == 0
        and out["verdict"] == "trusted"
        and out["signers"] == ["builder-a", "builder-b"]
    )
    assert (
        out["nar_hash"] == str(a.claim.nar_hash)
        and out["manifest_digest"] == a.claim.manifest_digest.hex()
    )
    assert out["nix_signatures"][0] == a.nix_sig().encode()
    assert [c["status"] for c in out["claims"]] == ["counted", "counted", "ignored"]
    r = decide(world, "a.claim", "c-lie.claim", json_out=True)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["verdict"] == "conflict"
    assert sorted(o["signers"] for o in out["outcomes"]) == [["builder-a"], ["builder-c"]]
    out = json.loads(decide(world, "b.claim", json_out=True).stdout)
    assert (out["verdict"], out["have"], out["need"], out["missing"]) == (
        "insufficient",
        1,
        2,
        ["builder-a", "builder-c"],
    )


def _bad_inputs(world: Path, tmp: Path) -> list[tuple[list[str], str]]:
    good = (world / "a.claim").read_bytes()
    files = {
        "trunc.claim": good[: len(good) // 2],
        "empty.claim": b"",
        "huge.claim": b"\xc6\x7f\xff\xff\xff" + b"\x00" * 64,  # a bin that claims 2 GiB
        "text.claim": b"not a claim at all\n",
        "b64.secret": b"builder-x:this is not base64!",
        "short.secret": b"builder-x:" + base64.b64encode(b"k" * 40),
        "ssh.secret": b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
        "ssh.toml": b'trusted = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx5 me@host"]\nthreshold = 1\n',
        "shortkey.toml": b'trusted = ["builder-x:AAAA"]\nthreshold = 1\n',
        "broken.toml": b"trusted = [\n",
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        os.chmod(tmp / name, 0o600)
    (tmp / "open.secret").write_text(SecretKey.generate("x").encode())
    os.chmod(tmp / "open.secret", 0o644)
    t = str(tmp)
    claim = [
        "trust",
        "claim",
        str(world / "out"),
        "--store-path",
        STORE_PATH,
        "-o",
        f"{t}/x.claim",
        "--key",
    ]
    return [
        (["trust", "verify", f"{t}/trunc.claim"], "not valid msgpack"),
        (["trust", "verify", f"{t}/empty.claim"], "not valid msgpack"),
        (["trust", "verify", f"{t}/huge.claim"], "not valid msgpack"),
        (["trust", "verify", f"{t}/text.claim"], "not valid msgpack"),
        (["trust", "verify", f"{t}/missing.claim"], "no such file"),
        (["trust", "verify", t], "is a directory"),
        ([*claim, f"{t}/b64.secret"], "not valid base64"),
        ([*claim, f"{t}/short.secret"], "has 40 bytes"),
        ([*claim, f"{t}/ssh.secret"], "no 'name:' prefix"),
        ([*claim, f"{t}/open.secret"], "chmod 600"),
        ([*claim, str(world / "a.public")], "is a public key"),
        (["trust", "pubkey", f"{t}/short.secret"], "has 40 bytes"),
        (
            [
                "trust",
                "claim",
                f"{t}/nothing",
                "--key",
                str(world / "a.secret"),
                "--store-path",
                STORE_PATH,
                "-o",
                f"{t}/x.claim",
            ],
            "no such file or directory",
        ),
        (
            [
                "trust",
                "claim",
                str(world / "out"),
                "--key",
                str(world / "a.secret"),
                "--store-path",
                "/nix/store/hello",
                "-o",
                f"{t}/x.claim",
            ],
            "is not <32 nix32",
        ),
        (
            [
                "trust",
                "claim",
                str(world / "out"),
                "--key",
                str(world / "a.secret"),
                "--store-path",
                STORE_PATH,
                "--references",
                "/usr/lib",
                "-o",
                f"{t}/x.claim",
            ],
            "not in the store directory",
        ),
        (
            ["trust", "decide", STORE_PATH, "--policy", f"{t}/ssh.toml", str(world / "a.claim")],
            "ssh.toml line 1",
        ),
        (
            [
                "trust",
                "decide",
                STORE_PATH,
                "--policy",
                f"{t}/shortkey.toml",
                str(world / "a.claim"),
            ],
            "has 3 bytes",
        ),
        (
            ["trust", "decide", STORE_PATH, "--policy", f"{t}/broken.toml", str(world / "a.claim")],
            "not valid TOML",
        ),
        (
            ["trust", "decide", STORE_PATH, "--policy", f"{t}/none.toml", str(world / "a.claim")],
            "none.toml: no such file",
        ),
        (
            [
                "trust",
                "decide",
                STORE_PATH,
                "--policy",
                str(world / "policy.toml"),
                f"{t}/trunc.claim",
            ],
            "msgpack",
        ),
        (
            [
                "trust",
                "decide",
                "hello",
                "--policy",
                str(world / "policy.toml"),
                str(world / "a.claim"),
            ],
            "store path",
        ),
        (["trust", "decide", STORE_PATH, str(world / "a.claim")], "required: --policy"),
        (
            ["trust", "decide", STORE_PATH, "--policy", str(world / "policy.toml")],
            "required: CLAIM",
        ),
        (["trust", "verify", str(world / "a.claim"), "--bogus"], "unrecognized arguments: --bogus"),
        (["trust"], "required: COMMAND"),
        (["trust", "keygen", "bad:name", "-o", f"{t}/k"], "key name 'bad:name' is not valid"),
    ]


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_3(world: Path, tmp_path: Path) -> None:
    for args, message in _bad_inputs(world, tmp_path):
        r = ferry(*args)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        errors = [line for line in r.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, (args, r.stderr)
    assert not (tmp_path / "x.claim").exists()


def test_help_explains_exit_codes() -> None:
    r = ferry("trust", "decide", "--help")
    assert r.returncode == 0
    assert (
        "3  bad input" in r.stdout
        and "2  decide: trusted builders signed different results" in r.stdout
    )
