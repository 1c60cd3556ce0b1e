"""Nix signatures: `Sig: <key name>:<base64 of 64 bytes>` over a narinfo's fingerprint.

The fingerprint (`store.narinfo.fingerprint`) is
`1;<store path>;sha256:<nix32 NarHash>;<NarSize>;<sorted comma-joined full references>`.
Nix checks a `Sig:` with the trusted public key of the same name, so verification here
does the same: a signature under an unknown name is not valid, whatever its bytes.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from store.narinfo import NarInfo
from trust.key import SIGNATURE_SIZE, KeyFormatError, PublicKey, SecretKey, check_name, split


@dataclass(frozen=True, slots=True)
class NixSignature:
    key_name: str
    signature: bytes

    def __post_init__(self) -> None:
        check_name(self.key_name)
        if len(self.signature) != SIGNATURE_SIZE:
            raise KeyFormatError(
                f"signature by {self.key_name!r} has {len(self.signature)} bytes; an ed25519 signature has "
                f"{SIGNATURE_SIZE}"
            )

    def encode(self) -> str:
        return f"{self.key_name}:{base64.b64encode(self.signature).decode()}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str) -> NixSignature:
        return cls(*split(text, "signature"))

    def verify(self, fingerprint: str, key: PublicKey) -> bool:
        return key.name == self.key_name and key.verify(fingerprint.encode(), self.signature)


def sign(key: SecretKey, fingerprint: str) -> NixSignature:
    return NixSignature(key.name, key.sign(fingerprint.encode()))


def signers(info: NarInfo, keys: Iterable[PublicKey]) -> tuple[str, ...]:
    """Names of the keys in `keys` with a valid `Sig:` on `info`; malformed Sig lines count for nothing."""
    fp = info.fingerprint()
    by_name = {k.name: k for k in keys}
    valid = []
    for text in info.sigs:
        try:
            sig = NixSignature.decode(text)
        except KeyFormatError:
            continue
        key = by_name.get(sig.key_name)
        if key is not None and sig.verify(fp, key) and key.name not in valid:
            valid.append(key.name)
    return tuple(valid)


def sign_narinfo(info: NarInfo, key: SecretKey) -> NarInfo:
    """`info` with this key's signature added (replacing an earlier one by the same name)."""
    sig = sign(key, info.fingerprint()).encode()
    kept = tuple(s for s in info.sigs if s.partition(":")[0] != key.name)
    return dataclasses.replace(info, sigs=kept + (sig,))
