"""Typed content hashes as Nix prints and parses them (`sha256:<nix32>` and friends)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from store import nix32

SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}


class HashError(ValueError):
    """A hash string Nix would not accept."""


@dataclass(frozen=True, slots=True)
class Hash:
    algo: str
    digest: bytes

    def __post_init__(self) -> None:
        if self.algo not in SIZES:
            raise HashError(
                f"unknown hash algorithm {self.algo!r} (expected one of {', '.join(SIZES)})"
            )
        if len(self.digest) != SIZES[self.algo]:
            raise HashError(
                f"{self.algo} digest must be {SIZES[self.algo]} bytes, got {len(self.digest)}"
            )

    @classmethod
    def sha256(cls, digest: bytes) -> Hash:
        return cls("sha256", digest)

    def nix32(self) -> str:
        return nix32.encode(self.digest)

    def hex(self) -> str:
        return self.digest.hex()

    def sri(self) -> str:
        return f"{self.algo}-{base64.b64encode(self.digest).decode()}"

    def encode(self) -> str:
        """Nix's canonical form in narinfo and path-info: `algo:<nix32>`."""
        return f"{self.algo}:{self.nix32()}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str, default_algo: str | None = None) -> Hash:
        """Parse `algo:<base16|nix32|base64>` or SRI `algo-<base64>`, as Nix's parseAny.

        `default_algo` allows a bare digest (as `nix-store -q --hash` never prints one,
        but users paste them).
        """
        if ":" in text:
            algo, _, body = text.partition(":")
        elif "-" in text and text.partition("-")[0] in SIZES:
            algo, _, body = text.partition("-")
            return cls(algo, _b64(body, algo, text))
        elif default_algo is not None:
            algo, body = default_algo, text
        else:
            raise HashError(f"hash {text!r} has no algorithm prefix (expected e.g. 'sha256:...')")
        if algo not in SIZES:
            raise HashError(f"unknown hash algorithm {algo!r} in {text!r}")
        size = SIZES[algo]
        if len(body) == 2 * size:
            try:
                return cls(algo, bytes.fromhex(body))
            except ValueError:
                raise HashError(f"invalid base-16 {algo} hash {text!r}") from None
        if len(body) == nix32.encoded_length(size):
            try:
                return cls(algo, nix32.decode(body, size))
            except nix32.Nix32Error as e:
                raise HashError(str(e)) from None
        if len(body) == len(base64.b64encode(bytes(size))):
            return cls(algo, _b64(body, algo, text))
        raise HashError(f"hash {text!r} has the wrong length for {algo}")


def _b64(body: str, algo: str, text: str) -> bytes:
    try:
        digest = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise HashError(f"invalid base-64 {algo} hash {text!r}") from None
    if len(digest) != SIZES[algo]:
        raise HashError(f"hash {text!r} has the wrong length for {algo}")
    return digest


def compress(digest: bytes, size: int) -> bytes:
    """Nix's compressHash: XOR-fold a digest down to `size` bytes."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)
