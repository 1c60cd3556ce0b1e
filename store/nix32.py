"""Nix's base-32 ("nix32"): its own alphabet, and the digest read as a little-endian
number whose most significant 5-bit group is printed first.

This is not RFC 4648 base32: the alphabet omits e, o, u, t and the byte order is
reversed, so `nix32.encode(d)` is what `nix-hash --to-base32` prints for `d`.
"""

from __future__ import annotations

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}


class Nix32Error(ValueError):
    """A string is not valid nix32 for the expected digest length."""


def encoded_length(size: int) -> int:
    """Characters nix32 uses for `size` bytes (20 -> 32, 32 -> 52)."""
    return (size * 8 - 1) // 5 + 1 if size else 0


def encode(digest: bytes) -> str:
    value = int.from_bytes(digest, "little")
    n = encoded_length(len(digest))
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(n - 1, -1, -1))


def decode(text: str, size: int | None = None) -> bytes:
    """Decode nix32 text into `size` bytes (default: the size the length implies).

    Rejects characters outside the alphabet and bits beyond `size` bytes, as Nix does.
    """
    if size is None:
        size = len(text) * 5 // 8
    if len(text) != encoded_length(size):
        raise Nix32Error(
            f"nix32 string of {len(text)} characters cannot hold {size} bytes "
            f"(expected {encoded_length(size)} characters)"
        )
    value = 0
    for pos, c in enumerate(text):
        digit = _DIGIT.get(c)
        if digit is None:
            raise Nix32Error(f"invalid nix32 character {c!r} at position {pos} in {text!r}")
        value = (value << 5) | digit
    if value >> (8 * size):
        raise Nix32Error(f"nix32 string {text!r} has bits set beyond {size} bytes")
    return value.to_bytes(size, "little")


def is_nix32(text: str) -> bool:
    return all(c in _DIGIT for c in text)
