"""Which chunks the client already holds make good zstd prefixes for the ones it wants.

An update is mostly the previous version of the same package: find a locally complete
store path with the same package name (`foo-1.2` ~ `foo-1.3`; `python3.11-numpy-2.4.5` ~
`python3.11-numpy-2.4.6`; with a mass rebuild, the very same name), then for each wanted
file the same relative path in it (else a file whose path differs only in digits:
`libfoo.so.1.2` ~ `libfoo.so.1.3`), and for its i-th chunk the base file's chunks i-1,
i and i+1 (a small insertion shifts bytes across a chunk boundary). Pure: fed manifests,
returns digests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from store.manifest import Manifest
from store.path import StorePath

MAX_BASES_PER_CHUNK = 3
_DIGITS = re.compile(rb"\d+")


def package_name(sp: StorePath) -> str:
    """The name without its version, as Nix's parseDrvName splits it: up to the first
    dash followed by something other than a letter."""
    return _package(sp.name)


def _package(name: str) -> str:
    parts = name.split("-")
    for i in range(1, len(parts)):
        if parts[i] and not parts[i][0].isalpha():
            return "-".join(parts[:i])
    return name


def pick_base(target: StorePath, local: Iterable[StorePath]) -> StorePath | None:
    """The local path most like `target`: same package name, the closest name string."""
    ranked = rank_bases(target, (str(p) for p in local))
    return StorePath.parse(ranked[0]) if ranked else None


def rank_bases(target: StorePath, local: Iterable[str]) -> list[str]:
    """The store paths among `local` of `target`'s package, the closest name first. On
    strings: a store can hold thousands of one package name (`source`), and each path of
    a closure being fetched asks."""
    name, prefix, me = target.name, target.store_dir + "/", str(target)
    package = _package(name)
    start = len(prefix) + 33  # past the 32 hash characters and the dash
    same = [p for p in local if p != me and p.startswith(prefix) and _package(p[start:]) == package]
    return sorted(same, key=lambda p: (_distance(p[start:], name), p))


def _distance(a: str, b: str) -> int:
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return len(a) + len(b) - 2 * common


def chunk_bases(
    wanted: Manifest, base: Manifest, present: set[bytes]
) -> dict[bytes, tuple[bytes, ...]]:
    """For each chunk of `wanted`, the chunks of `base` (present locally) to send as its
    bases, in the order the prefix concatenates them."""
    by_path = {e.path: e for e in base.entries if e.chunks}
    by_shape: dict[bytes, list] = {}
    for e in base.entries:
        if e.chunks:
            by_shape.setdefault(_DIGITS.sub(b"#", e.path), []).append(e)
    out: dict[bytes, tuple[bytes, ...]] = {}
    for e in wanted.entries:
        if not e.chunks:
            continue
        match = by_path.get(e.path)
        if match is None:
            alike = by_shape.get(_DIGITS.sub(b"#", e.path), [])
            match = min(alike, key=lambda x: abs(x.size - e.size)) if alike else None
        if match is None:
            continue
        for i, d in enumerate(e.chunks):
            if d in out or d in present:
                continue
            # The likeliest match last: nearest the data in the prefix, cheapest to refer to.
            picks = [match.chunks[j] for j in (i - 1, i + 1, i) if 0 <= j < len(match.chunks)]
            bases = tuple(dict.fromkeys(b for b in picks if b in present))[:MAX_BASES_PER_CHUNK]
            if bases:
                out[d] = bases
    return out
