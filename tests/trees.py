"""Hypothesis strategies for file trees, and helpers to write them to disk.

A tree is a `Dir` (name -> node), a `File` or a `Link`. File contents come from a
size and a seed, so large files around chunk and block boundaries are cheap to draw.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from store import nar


@dataclass(frozen=True)
class File:
    size: int
    seed: int
    executable: bool

    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


@dataclass(frozen=True)
class Link:
    target: bytes


@dataclass(frozen=True)
class Dir:
    children: dict[bytes, File | Link | Dir]


Node = File | Link | Dir

# Sizes around the inline limit (224), the block (4096) and chunk (64 KiB) boundaries.
BOUNDARY_SIZES = [
    0,
    1,
    7,
    8,
    9,
    223,
    224,
    225,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
    2 * 65536 + 3,
]

names = st.binary(min_size=1, max_size=255).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
short_names = (
    st.text("abcXYZ019._-+=", min_size=1, max_size=8)
    .map(str.encode)
    .filter(lambda n: n not in (b".", b".."))
)
targets = st.binary(min_size=1, max_size=4095).filter(lambda t: b"\0" not in t)
files = st.builds(
    File,
    size=st.one_of(st.sampled_from(BOUNDARY_SIZES), st.integers(0, 300_000)),
    seed=st.integers(0, 2**32),
    executable=st.booleans(),
)
links = st.builds(Link, targets)


def trees(
    name_strategy: st.SearchStrategy[bytes] = st.one_of(short_names, names),
) -> st.SearchStrategy[Node]:
    leaves = st.one_of(files, links)
    dirs = st.recursive(
        leaves,
        lambda children: st.builds(Dir, st.dictionaries(name_strategy, children, max_size=6)),
        max_leaves=24,
    )
    # Mostly a directory at the root, as store paths are; sometimes a lone file or link.
    return st.one_of(st.builds(Dir, st.dictionaries(name_strategy, dirs, max_size=8)), leaves)


def write(node: Node, path: Path) -> None:
    p = os.fsencode(path)
    if isinstance(node, File):
        with open(p, "wb") as f:
            f.write(node.data())
        os.chmod(p, 0o755 if node.executable else 0o644)
    elif isinstance(node, Link):
        os.symlink(node.target, p)
    else:
        os.mkdir(p)
        for name, child in node.children.items():
            write(child, Path(os.fsdecode(p + b"/" + name)))


def events(node: Node, path: bytes = b"") -> list[nar.NarEvent]:
    """The NAR events for a tree, independently of the filesystem walk."""
    if isinstance(node, File):
        out: list[nar.NarEvent] = [nar.Regular(path, node.size, node.executable)]
        if node.size:
            out.append(nar.Contents(node.data()))
        return out
    if isinstance(node, Link):
        return [nar.Symlink(path, node.target)]
    out = [nar.Directory(path)]
    for name in sorted(node.children):
        out += events(node.children[name], path + b"/" + name if path else name)
    return out
