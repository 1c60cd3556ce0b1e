"""Helpers: a tree (tests.trees) as a manifest, its chunks laid out in one slab the way
the store lays them (4 KiB-aligned), the EROFS image over it, and trees read back from
disk for comparison."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from erofs.writer import Device, write_image
from node.local.image import entries_of
from ondemand import syscalls
from store import build, nar
from store.manifest import Manifest
from store.path import StorePath
from tests import trees

SP = StorePath("/nix/store", "1" * 32, "image-test-1.0")

Model = dict[bytes, tuple]


class Slab:
    def __init__(self) -> None:
        self.data = bytearray()
        self.places: dict[bytes, tuple[int, int]] = {}

    def add(self, digest: bytes, chunk: bytes | memoryview) -> None:
        if digest not in self.places:
            self.places[digest] = (1, len(self.data) // 4096)
            self.data += chunk
            self.data += bytes(-len(self.data) % 4096)


def manifest_of(tree: trees.Node, slab: Slab, sp: StorePath = SP) -> Manifest:
    return build.from_nar([nar.encode_bytes(trees.events(tree))], sp, on_chunk=slab.add)


def image_of(tree: trees.Node, slab: Slab | None = None) -> tuple[bytes, Slab, Manifest]:
    slab = slab or Slab()
    m = manifest_of(tree, slab)
    return (
        write_image(
            entries_of(m, slab.places.__getitem__), [Device(b"slab", len(slab.data) // 4096)]
        ),
        slab,
        m,
    )


def model(node: trees.Node, path: bytes = b"") -> Model:
    """path -> ("dir",) | ("file", executable, bytes) | ("link", target), from the model."""
    if isinstance(node, trees.File):
        return {path: ("file", node.executable, node.data())}
    if isinstance(node, trees.Link):
        return {path: ("link", node.target)}
    out: Model = {path: ("dir",)}
    for name, child in node.children.items():
        out.update(model(child, path + b"/" + name if path else name))
    return out


def on_disk(root: Path | str) -> Model:
    """The same, read from a directory (an extracted or mounted tree)."""
    base = os.fsencode(root)
    out: Model = {}
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        rel = b"" if rel == b"." else rel
        out[rel] = ("dir",)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            r = os.path.join(rel, name) if rel else name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[r] = ("link", os.readlink(p))
            else:
                with open(p, "rb") as f:
                    out[r] = ("file", bool(st.st_mode & 0o100), f.read())
    return out


def fsck_extract(image: Path, slab: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["fsck.erofs", f"--device={slab}", f"--extract={dest}", str(image)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def mount(image: Path, target: Path, devices: list[str]) -> None:
    syscalls.mount_erofs(str(image), str(target), devices)


def umount(target: Path) -> None:
    syscalls.umount(str(target))
