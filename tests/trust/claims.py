"""Helpers shared by the claim and policy tests."""

from __future__ import annotations

from store.hash import Hash
from store.path import StorePath
from trust import claim
from trust.claim import Claim, SignedClaim
from trust.key import SecretKey

STORE = "/nix/store"
PATH_A = StorePath(STORE, "0" * 31 + "a", "hello-2.12")
PATH_B = StorePath(STORE, "0" * 31 + "b", "hello-2.12")
DEP = StorePath(STORE, "1" * 32, "glibc-2.40")
GOOD = Hash.sha256(b"\x11" * 32)
EVIL = Hash.sha256(b"\xee" * 32)


def make(
    key: SecretKey,
    path: StorePath = PATH_A,
    nar_hash: Hash = GOOD,
    manifest: bytes = b"\x22" * 32,
    nar_size: int = 4096,
    refs: tuple[StorePath, ...] = (DEP,),
    time: int = 1_700_000_000,
) -> SignedClaim:
    return claim.sign(Claim(key.public, path, nar_hash, nar_size, refs, manifest, time), key)
