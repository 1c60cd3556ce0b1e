"""ed25519 keys in Nix's text format.

    secret:  <name>:<base64 of 64 bytes: 32-byte seed, then the 32-byte public key>
    public:  <name>:<base64 of 32 bytes>

That is libsodium's layout, which Nix uses, so keys from `nix key generate-secret` or
`nix-store --generate-binary-cache-key` load here and ours load in Nix. A key is known
by its name *and* its bytes: Nix picks the public key to check a `Sig:` line by name.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64
MAX_NAME = 255

# Nix splits at the first ':' and accepts any non-empty name; we also keep out
# whitespace and control characters, which could never survive a narinfo line.
_NAME = re.compile(rf"[^\s:\x00-\x1f\x7f]{{1,{MAX_NAME}}}")


class KeyFormatError(ValueError):
    """Text that is not a Nix-format key; the message says what is wrong with it."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyFormatError(
            f"key name {name[:80]!r} is not valid: use 1-{MAX_NAME} characters without "
            "':' or whitespace (for example 'builder-1.example.org')"
        )
    return name


def split(text: str, what: str) -> tuple[str, bytes]:
    """`name:base64` → (name, raw bytes), with errors that name `what`."""
    text = text.strip()
    name, sep, b64 = text.partition(":")
    if not sep:
        raise KeyFormatError(f"{what} {_show(text)} has no 'name:' prefix (expected name:base64)")
    check_name(name)
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} {name!r}: {_show(b64)} is not valid base64") from None
    return name, raw


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


@dataclass(frozen=True, slots=True)
class PublicKey:
    name: str
    key: bytes

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.key) != PUBLIC_SIZE:
            raise KeyFormatError(
                f"public key {self.name!r} has {len(self.key)} bytes; an ed25519 public key has {PUBLIC_SIZE}"
            )

    def encode(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str) -> PublicKey:
        name, raw = split(text, "public key")
        if len(raw) == SEED_SIZE + PUBLIC_SIZE:
            raise KeyFormatError(
                f"{name!r} is a secret key where a public key was expected; "
                "get its public key with `ferry trust pubkey FILE`"
            )
        return cls(name, raw)

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True, repr=False)
class SecretKey:
    name: str
    seed: bytes
    # Made once: making it from the seed costs as much as a signature, and the gateway
    # signs every narinfo it answers.
    _private: Ed25519PrivateKey = field(init=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.seed) != SEED_SIZE:
            raise KeyFormatError(f"secret key {self.name!r}: seed must be {SEED_SIZE} bytes")
        object.__setattr__(self, "_private", Ed25519PrivateKey.from_private_bytes(self.seed))

    def __repr__(self) -> str:
        # Never print the seed by accident (logs, tracebacks, test output).
        return f"SecretKey({self.name!r})"

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        check_name(name)
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.name, self._private.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def encode(self) -> str:
        return f"{self.name}:{base64.b64encode(self.seed + self.public.key).decode()}"

    @classmethod
    def decode(cls, text: str) -> SecretKey:
        name, raw = split(text, "secret key")
        if len(raw) == PUBLIC_SIZE:
            raise KeyFormatError(f"{name!r} is a public key where a secret key was expected")
        if len(raw) != SEED_SIZE + PUBLIC_SIZE:
            raise KeyFormatError(
                f"secret key {name!r} has {len(raw)} bytes; a Nix ed25519 secret key has {SEED_SIZE + PUBLIC_SIZE}"
            )
        key = cls(name, raw[:SEED_SIZE])
        if key.public.key != raw[SEED_SIZE:]:
            # libsodium keeps the public half beside the seed; if they disagree the file
            # was damaged, and signatures would not verify under the key people trust.
            raise KeyFormatError(
                f"secret key {name!r} is corrupt: its public half does not match its seed"
            )
        return key
