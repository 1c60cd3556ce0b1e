"""Nix signatures over narinfo fingerprints, against real Nix 2.8 both ways: Nix's
signatures verify in ferry, and Nix accepts (or rejects) what ferry signed when it
substitutes over HTTP with `trusted-public-keys`."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from store.narinfo import NarInfo
from tests.httpdir import serve
from trust import keyfile, signature
from trust.key import PublicKey, SecretKey
from trust.signature import NixSignature

NIX = ("nix", "--extra-experimental-features", "nix-command")


def narinfos(cache: Path) -> dict[str, NarInfo]:
    return {p.name: NarInfo.decode(p.read_text()) for p in sorted(cache.glob("*.narinfo"))}


def test_nix_store_sign_verifies_in_ferry(nix_closure) -> None:
    keys = [keyfile.load_public(str(pk)) for _, pk in nix_closure.keys]
    infos = narinfos(nix_closure.cache)
    assert len(infos) == len(nix_closure.paths) == 2
    for info in infos.values():
        assert len(info.sigs) == 2
        assert signature.signers(info, keys) == ("builder-a", "builder-b")
        # Any change to what the fingerprint covers breaks every signature.
        for changed in (
            dataclasses.replace(info, nar_size=info.nar_size + 1),
            dataclasses.replace(info, references=()),
        ):
            if changed.fingerprint() != info.fingerprint():
                assert signature.signers(changed, keys) == ()
        # Nix matches signatures to keys by name: same bytes under another name do not count.
        renamed = [PublicKey("someone-else", k.key) for k in keys]
        assert signature.signers(info, renamed) == ()


def test_ferry_key_signs_like_nix_store_sign(nix, nix_closure, tmp_path: Path) -> None:
    # `nix store sign` with a key file ferry wrote gives the signature ferry computes.
    sk = SecretKey.generate("ferry-1")
    keyfile.write_secret(str(tmp_path / "sk"), sk)
    store = tmp_path / "store"
    shutil.copytree(nix_closure.store, store, symlinks=True)
    nix.run(
        *NIX,
        "store",
        "sign",
        "--store",
        str(store),
        "--key-file",
        str(tmp_path / "sk"),
        nix_closure.top,
    )
    info = nix.run(
        *NIX, "path-info", "--json", "--sigs", "--store", str(store), nix_closure.top
    ).decode()
    ours = signature.sign(
        sk, narinfos(nix_closure.cache)[_narinfo_name(nix_closure.top)].fingerprint()
    )
    assert f'"{ours.encode()}"' in info


def test_signature_text_rejects_malformed() -> None:
    sig = signature.sign(SecretKey.generate("k"), "1;x").encode()
    assert NixSignature.decode(sig).encode() == sig
    for bad in (sig[:-4], "k:" + "A" * 84 + "==", sig.replace("k:", "")):
        with pytest.raises(ValueError):
            NixSignature.decode(bad)


def _narinfo_name(path: str) -> str:
    return Path(path).name.split("-", 1)[0] + ".narinfo"


def _resigned_cache(src: Path, dest: Path, key: SecretKey) -> Path:
    """A copy of the binary cache at `src` whose narinfos carry only `key`'s signature."""
    shutil.copytree(src, dest)
    for name, info in narinfos(src).items():
        info = signature.sign_narinfo(dataclasses.replace(info, sigs=()), key)
        (dest / name).write_text(info.encode())
    return dest


def _nix_copy(
    nix, url: str, dest: Path, trusted: PublicKey, path: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *NIX,
            "copy",
            "--from",
            url,
            "--to",
            str(dest),
            path,
            "--option",
            "substituters",
            "",
            "--option",
            "trusted-public-keys",
            trusted.encode(),
            "--option",
            "narinfo-cache-negative-ttl",
            "0",
        ],
        capture_output=True,
        env=nix.env,
        timeout=120,
    )


def _valid(nix, store: Path, path: str) -> bool:
    return (
        subprocess.run(
            ["nix-store", "--store", str(store), "--check-validity", path],
            capture_output=True,
            env=nix.env,
        ).returncode
        == 0
    )


def test_nix_accepts_ferry_signed_narinfo(nix, nix_closure, tmp_path: Path) -> None:
    ours = SecretKey.generate("ferry-builder-1")
    cache = _resigned_cache(nix_closure.cache, tmp_path / "cache", ours)
    with serve(cache) as url:
        r = _nix_copy(nix, url, tmp_path / "dest", ours.public, nix_closure.top)
    assert r.returncode == 0, r.stderr.decode()
    for p in nix_closure.paths:
        assert _valid(nix, tmp_path / "dest", p)


def test_nix_rejects_narinfo_signed_by_another_key(nix, nix_closure, tmp_path: Path) -> None:
    trusted, other = SecretKey.generate("ferry-builder-1"), SecretKey.generate("ferry-builder-1")
    cache = _resigned_cache(nix_closure.cache, tmp_path / "cache", other)  # same name, other key
    with serve(cache) as url:
        r = _nix_copy(nix, url, tmp_path / "dest", trusted.public, nix_closure.top)
    assert r.returncode != 0
    assert b"lacks a valid signature" in r.stderr, r.stderr.decode()
    assert not _valid(nix, tmp_path / "dest", nix_closure.top)
