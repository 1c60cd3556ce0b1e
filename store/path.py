"""Store paths: `<store dir>/<32 nix32 chars>-<name>`, validated as Nix 2.8 does."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from store import nix32
from store.hash import Hash, compress

DEFAULT_STORE_DIR = "/nix/store"
HASH_CHARS = 32
HASH_BYTES = 20
MAX_NAME_LEN = 211
_NAME_RE = re.compile(r"[A-Za-z0-9+\-._?=]+")


class StorePathError(ValueError):
    """Text that is not a valid store path; the message says which rule failed."""


def check_name(name: str) -> None:
    """Nix's checkName: non-empty, at most 211 characters of [A-Za-z0-9+-._?=]."""
    if not name:
        raise StorePathError("store path name is empty")
    if len(name) > MAX_NAME_LEN:
        raise StorePathError(
            f"store path name {name[:40]!r}... is longer than {MAX_NAME_LEN} characters"
        )
    if not _NAME_RE.fullmatch(name):
        bad = next(c for c in name if not _NAME_RE.fullmatch(c))
        raise StorePathError(
            f"store path name {name!r} contains {bad!r}; allowed: letters, digits and + - . _ ? ="
        )


def check_store_dir(store_dir: str) -> str:
    if not store_dir.startswith("/") or (store_dir != "/" and store_dir.endswith("/")):
        raise StorePathError(
            f"store directory {store_dir!r} must be absolute with no trailing slash"
        )
    return store_dir


@dataclass(frozen=True, slots=True, order=True)
class StorePath:
    """A store path; `hash_part` is the 32 nix32 characters, `name` the rest."""

    store_dir: str
    hash_part: str
    name: str

    def __post_init__(self) -> None:
        check_store_dir(self.store_dir)
        if len(self.hash_part) != HASH_CHARS or not nix32.is_nix32(self.hash_part):
            raise StorePathError(
                f"store path hash {self.hash_part!r} must be {HASH_CHARS} characters of {nix32.ALPHABET!r}"
            )
        check_name(self.name)

    @property
    def base_name(self) -> str:
        return f"{self.hash_part}-{self.name}"

    def encode(self) -> str:
        return f"{self.store_dir}/{self.base_name}"

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
        """Parse a full store path in `store_dir` (nothing after the base name)."""
        check_store_dir(store_dir)
        prefix = store_dir.rstrip("/") + "/"
        if not text.startswith(prefix):
            raise StorePathError(f"path {text!r} is not in the store directory {store_dir!r}")
        return cls.from_base_name(text[len(prefix) :], store_dir)

    @classmethod
    def parse(cls, text: str) -> StorePath:
        """A full store path whose store directory is whatever precedes its base name
        (for formats that record full paths from any store)."""
        head, sep, base = text.rpartition("/")
        if not sep:
            raise StorePathError(
                f"{text!r} is not a full store path (expected /nix/store/<hash>-<name>)"
            )
        return cls.from_base_name(base, head or "/")

    @classmethod
    def from_base_name(cls, base: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
        if "/" in base:
            raise StorePathError(f"{base!r} is not a store path base name (it contains '/')")
        if len(base) < HASH_CHARS + 2 or base[HASH_CHARS] != "-":
            raise StorePathError(f"{base!r} is not <{HASH_CHARS} nix32 characters>-<name>")
        return cls(store_dir, base[:HASH_CHARS], base[HASH_CHARS + 1 :])

    @classmethod
    def split(cls, text: str, store_dir: str = DEFAULT_STORE_DIR) -> tuple[StorePath, str]:
        """Split `/nix/store/<hash>-<name>/rest` into the store path and `rest`."""
        check_store_dir(store_dir)
        prefix = store_dir.rstrip("/") + "/"
        if not text.startswith(prefix):
            raise StorePathError(f"path {text!r} is not in the store directory {store_dir!r}")
        base, _, rest = text[len(prefix) :].partition("/")
        return cls.from_base_name(base, store_dir), rest

    @classmethod
    def make(
        cls, kind: str, inner: Hash, name: str, store_dir: str = DEFAULT_STORE_DIR
    ) -> StorePath:
        """Nix's makeStorePath: the path for `kind` (e.g. "source", "output:out") and `inner`."""
        check_name(name)
        fingerprint = f"{kind}:{inner.algo}:{inner.hex()}:{store_dir}:{name}"
        digest = compress(hashlib.sha256(fingerprint.encode()).digest(), HASH_BYTES)
        return cls(store_dir, nix32.encode(digest), name)

    @classmethod
    def for_source(
        cls,
        name: str,
        nar_hash: Hash,
        references: tuple[StorePath, ...] = (),
        store_dir: str = DEFAULT_STORE_DIR,
    ) -> StorePath:
        """The path `nix-store --add` gives a tree with this NarHash (recursive sha256)."""
        kind = "source" + "".join(f":{r}" for r in sorted(str(r) for r in references))
        return cls.make(kind, nar_hash, name, store_dir)
