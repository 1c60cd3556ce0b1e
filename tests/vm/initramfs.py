"""The VM's initramfs: a gzipped cpio archive ("newc", as the kernel's
`usr/gen_init_cpio` writes it) holding a static busybox, the kernel modules to load in
order, and an /init script."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"070701"
_DIR, _FILE, _LINK = 0o040000, 0o100000, 0o120000


@dataclass(frozen=True)
class Entry:
    name: str  # without a leading "/"
    mode: int  # type and permission bits
    data: bytes = b""  # a file's bytes, or a symlink's target


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def encode(entries: list[Entry]) -> bytes:
    out = bytearray()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        fields = (ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def decode(raw: bytes) -> list[Entry]:
    """The entries of an uncompressed newc archive (for tests of `encode`)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if raw[pos : pos + 6] != _MAGIC:
            raise ValueError(f"no newc header at byte {pos}")
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = raw[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        data = raw[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append(Entry(name, mode, data))


def module_depends(ko: Path) -> list[str]:
    """The modules `ko` needs loaded first, from its .modinfo "depends=" string."""
    raw = ko.read_bytes()
    at = raw.find(b"\0depends=")
    if at < 0:
        return []
    value = raw[at + 9 : raw.index(b"\0", at + 1)].decode()
    return [d for d in value.split(",") if d]


def load_order(wanted: list[str], find: dict[str, Path]) -> list[Path]:
    """`wanted` and what they depend on, each after its dependencies."""
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        ko = find.get(name)
        if ko is None:
            raise FileNotFoundError(f"no module {name} among the kernel's modules")
        for dep in module_depends(ko):
            visit(dep)
        order.append(ko)

    for w in wanted:
        visit(w)
    return order


def build(busybox: Path, modules: list[Path], init: str, files: dict[str, bytes]) -> bytes:
    entries = [
        Entry("bin", _DIR | 0o755),
        Entry("bin/busybox", _FILE | 0o755, busybox.read_bytes()),
        Entry("bin/sh", _LINK | 0o777, b"busybox"),
        Entry("init", _FILE | 0o755, init.encode()),
        Entry("modules", _DIR | 0o755),
        *(
            Entry(f"modules/{i:02d}-{ko.name}", _FILE | 0o644, ko.read_bytes())
            for i, ko in enumerate(modules)
        ),
        *(Entry(name, _FILE | 0o644, data) for name, data in files.items()),
    ]
    for d in ("dev", "proc", "sys", "host"):
        entries.append(Entry(d, _DIR | 0o755))
    return gzip.compress(encode(entries), compresslevel=1)
