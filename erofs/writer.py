"""Writes an EROFS metadata image for a tree whose file data lives on other devices.

Directories, symlinks and small files live in the image (inline after their inode when
the tail fits in the inode's block, else in data blocks); a chunked file is an inode plus
one `erofs_inode_chunk_index` per chunk, pointing at (device, block) where the chunk
already lies. Children are placed in name order, so one tree always gives the same bytes.

Metadata is what Nix gives a store path (`canonicalisePathMetaData`): owner root, mode
0444 or 0555, time 1. Nix re-applies it when it registers a path as valid, and on a
read-only mount any difference would fail the registration ("changing mode of …:
Read-only file system").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from erofs import layout as L

MTIME = 1  # Nix's store time


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class Chunks:
    """A file's data as chunks of `chunk_size` bytes (a power of two ≥ 4 KiB), each at
    (device_id ≥ 1, block address) on a device of the table, or None for a hole."""

    chunk_size: int
    where: tuple[tuple[int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    path: bytes  # relative to the root, b"" for the root itself, b"a/b" below it
    kind: Kind
    size: int = 0
    executable: bool = False
    data: bytes = b""  # a symlink's target, or the bytes of a file kept in the image
    chunks: Chunks | None = None


@dataclass(frozen=True, slots=True)
class Device:
    tag: bytes  # up to 64 bytes naming the device (ferry: the slab's file name)
    blocks: int


class TreeError(ValueError):
    """A tree the writer cannot represent; the message names the entry."""


@dataclass(eq=False)
class _Node:
    entry: Entry
    parent: _Node | None = None
    children: dict[bytes, _Node] = field(default_factory=dict)
    nid: int = 0
    ino: int = 0
    blkaddr: int = 0
    layout: int = L.LAYOUT_FLAT_PLAIN
    extended: bool = False
    size: int = 0
    body: bytes = b""  # directory or inline data (the directory's is filled in late)
    dir_blocks: list[list[tuple[bytes, _Node]]] = field(default_factory=list)

    @property
    def isize(self) -> int:
        return L.erofs_inode_extended.SIZE if self.extended else L.erofs_inode_compact.SIZE


def write_image(entries: Iterable[Entry], devices: Sequence[Device]) -> bytes:
    root = _tree(entries)
    order = _bfs(root)
    for i, n in enumerate(order):
        n.ino = i + 1
        _shape(n)
    devt_end = L.SUPER_OFFSET + L.erofs_super_block.SIZE + L.erofs_deviceslot.SIZE * len(devices)
    # As mkfs.erofs does: inodes start in block 0, after the superblock and the device
    # table. The root's nid is then never 0, and a nid is the inode number the kernel
    # reports, so the root's `.` and every `..` naming it are listed by readdir (glibc
    # and ls pass over entries whose d_ino is 0).
    meta_blkaddr = 0
    meta_len = _place_inodes(order, -(-devt_end // L.SLOT) * L.SLOT)
    next_blk = -(-meta_len // L.BLOCK)
    for n in order:
        if n.layout in (L.LAYOUT_FLAT_PLAIN, L.LAYOUT_FLAT_INLINE):
            full = n.size // L.BLOCK if n.layout == L.LAYOUT_FLAT_INLINE else -(-n.size // L.BLOCK)
            n.blkaddr = next_blk if full else 0
            next_blk += full
    if next_blk > 0xFFFFFFFF:
        raise TreeError("the tree needs more than 2^32 blocks of metadata")
    for n in order:
        if n.entry.kind is Kind.DIR:
            n.body = _dir_body(n)
    image = bytearray(next_blk * L.BLOCK)
    sb = L.erofs_super_block(
        checksum=0,
        feature_compat=0,
        blkszbits=L.BLKSZBITS,
        sb_extslots=0,
        root_nid=root.nid,
        inos=len(order),
        build_time=MTIME,  # compact inodes have no time of their own: they take this
        build_time_nsec=0,
        blocks=next_blk,
        meta_blkaddr=meta_blkaddr,
        xattr_blkaddr=0,
        uuid=bytes(16),
        volume_name=bytes(16),
        feature_incompat=L.FEATURE_INCOMPAT_CHUNKED_FILE
        | (L.FEATURE_INCOMPAT_DEVICE_TABLE if devices else 0),
        available_compr_algs=0,
        extra_devices=len(devices),
        devt_slotoff=(L.SUPER_OFFSET + L.erofs_super_block.SIZE) // L.erofs_deviceslot.SIZE,
        dirblkbits=0,
        xattr_prefix_count=0,
        xattr_prefix_start=0,
        packed_nid=0,
    )
    image[L.SUPER_OFFSET : L.SUPER_OFFSET + sb.SIZE] = sb.encode()
    pos = L.SUPER_OFFSET + sb.SIZE
    for d in devices:
        if len(d.tag) > 64:
            raise TreeError(f"device tag {d.tag[:80]!r} is longer than 64 bytes")
        image[pos : pos + L.erofs_deviceslot.SIZE] = L.erofs_deviceslot(
            d.tag.ljust(64, b"\0"), d.blocks, 0
        ).encode()
        pos += L.erofs_deviceslot.SIZE
    base = meta_blkaddr * L.BLOCK
    for n in order:
        at = base + n.nid * L.SLOT
        raw = _inode(n)
        image[at : at + len(raw)] = raw
        at += len(raw)
        if n.layout == L.LAYOUT_FLAT_INLINE:
            tail = n.body[(n.size // L.BLOCK) * L.BLOCK :]
            image[at : at + len(tail)] = tail
        elif n.layout == L.LAYOUT_CHUNK_BASED:
            for w in n.entry.chunks.where:  # type: ignore[union-attr]
                ix = (
                    L.erofs_inode_chunk_index(0, 0, L.NULL_ADDR)
                    if w is None
                    else L.erofs_inode_chunk_index(0, *w)
                )
                image[at : at + ix.SIZE] = ix.encode()
                at += ix.SIZE
        if n.layout != L.LAYOUT_CHUNK_BASED and n.blkaddr:
            full = n.size // L.BLOCK * L.BLOCK if n.layout == L.LAYOUT_FLAT_INLINE else n.size
            start = n.blkaddr * L.BLOCK
            image[start : start + full] = n.body[:full]
    return bytes(image)


def _tree(entries: Iterable[Entry]) -> _Node:
    nodes: dict[bytes, _Node] = {}
    for e in entries:
        if e.path in nodes:
            raise TreeError(f"{e.path!r} appears twice")
        node = _Node(e)
        if e.path == b"":
            if e.kind is not Kind.DIR:
                # A store path that is one file or symlink has no directory to hold it;
                # EROFS needs a root directory.
                raise TreeError("the root of an image must be a directory")
        else:
            parent_path, _, name = e.path.rpartition(b"/")
            parent = nodes.get(parent_path)
            if parent is None or parent.entry.kind is not Kind.DIR:
                raise TreeError(f"{e.path!r} comes before its directory {parent_path!r}")
            if not 0 < len(name) <= 255 or name in (b".", b"..") or b"\0" in name:
                raise TreeError(
                    f"{e.path!r}: a name must be 1 to 255 bytes, not . or .., without NUL"
                )
            parent.children[name] = node
            node.parent = parent
        nodes[e.path] = node
    if b"" not in nodes:
        raise TreeError("the tree has no root directory")
    return nodes[b""]


def _bfs(root: _Node) -> list[_Node]:
    order = [root]
    i = 0
    while i < len(order):
        order.extend(order[i].children[k] for k in sorted(order[i].children))
        i += 1
    return order


def _shape(n: _Node) -> None:
    """Size, layout and inode version of a node (directory contents come later)."""
    e = n.entry
    if e.kind is Kind.DIR:
        n.dir_blocks = _pack_dirents(n)
        full = len(n.dir_blocks) - 1
        n.size = full * L.BLOCK + _block_used(n.dir_blocks[-1])
        subdirs = sum(1 for c in n.children.values() if c.entry.kind is Kind.DIR)
        n.extended = 2 + subdirs > 0xFFFF
    elif e.kind is Kind.SYMLINK:
        if not 0 < len(e.data) < L.BLOCK:
            raise TreeError(f"{e.path!r}: a symlink target must be 1 to 4095 bytes")
        n.size = len(e.data)
        n.body = e.data
    else:
        n.size = e.size
        n.extended = e.size > 0xFFFFFFFF
        if e.chunks is not None:
            cs = e.chunks.chunk_size
            if cs < L.BLOCK or cs & (cs - 1) or cs > 1 << 31:
                raise TreeError(f"{e.path!r}: chunk size {cs} is not a power of two from 4 KiB")
            if len(e.chunks.where) != -(-e.size // cs):
                raise TreeError(
                    f"{e.path!r}: {len(e.chunks.where)} chunks for {e.size} bytes in {cs}-byte chunks"
                )
            n.layout = L.LAYOUT_CHUNK_BASED
            return
        if len(e.data) != e.size:
            raise TreeError(f"{e.path!r}: {len(e.data)} bytes of data for a {e.size}-byte file")
        n.body = e.data
    tail = n.size % L.BLOCK
    if n.size == 0 or tail == 0:
        n.layout = L.LAYOUT_FLAT_PLAIN
    elif n.isize + tail <= L.BLOCK:
        n.layout = L.LAYOUT_FLAT_INLINE
    else:
        n.layout = L.LAYOUT_FLAT_PLAIN  # the tail cannot share a block with the inode


def _place_inodes(order: list[_Node], start: int) -> int:
    """Give each node its nid, from byte `start` of the metadata area; returns the area's
    length."""
    pos = start
    for n in order:
        extra = 0
        if n.layout == L.LAYOUT_FLAT_INLINE:
            extra = n.size % L.BLOCK
        elif n.layout == L.LAYOUT_CHUNK_BASED:
            extra = L.erofs_inode_chunk_index.SIZE * len(n.entry.chunks.where)  # type: ignore[union-attr]
        # An inode never straddles a block, nor does its inline tail (the kernel reads
        # them from one block); chunk indexes may run on, each 8-byte index stays whole.
        keep = n.isize + (extra if n.layout == L.LAYOUT_FLAT_INLINE else 0)
        if pos % L.BLOCK + keep > L.BLOCK:
            pos = -(-pos // L.BLOCK) * L.BLOCK
        n.nid = pos // L.SLOT
        pos += n.isize + extra
        pos = -(-pos // L.SLOT) * L.SLOT
    return pos


def _file_type(n: _Node) -> int:
    return {Kind.DIR: L.FT_DIR, Kind.FILE: L.FT_REG_FILE, Kind.SYMLINK: L.FT_SYMLINK}[n.entry.kind]


def _pack_dirents(n: _Node) -> list[list[tuple[bytes, _Node]]]:
    """Sorted names (with . and ..) split into blocks: dirents first, then the names."""
    names = sorted([b".", b"..", *n.children])
    blocks: list[list[tuple[bytes, _Node]]] = [[]]
    used = 0
    for name in names:
        need = L.erofs_dirent.SIZE + len(name)
        if used + need > L.BLOCK:
            blocks.append([])
            used = 0
        blocks[-1].append((name, n.children.get(name, n)))  # . and .. are fixed up in _dir_body
        used += need
    return blocks


def _block_used(block: list[tuple[bytes, _Node]]) -> int:
    return sum(L.erofs_dirent.SIZE + len(name) for name, _ in block)


def _dir_body(n: _Node) -> bytes:
    out = bytearray()
    for i, block in enumerate(n.dir_blocks):
        heads = bytearray()
        names = bytearray()
        nameoff = L.erofs_dirent.SIZE * len(block)
        for name, child in block:
            target = n if name == b"." else (n.parent or n) if name == b".." else child
            heads += L.erofs_dirent(target.nid, nameoff + len(names), _file_type(target)).encode()
            names += name
        blk = bytes(heads + names)
        if i < len(n.dir_blocks) - 1:
            blk = blk.ljust(L.BLOCK, b"\0")
        out += blk
    return bytes(out)


def _inode(n: _Node) -> bytes:
    e = n.entry
    mode = {
        Kind.DIR: L.S_IFDIR | 0o555,
        Kind.SYMLINK: L.S_IFLNK | 0o777,
        Kind.FILE: L.S_IFREG | (0o555 if e.executable else 0o444),
    }[e.kind]
    if n.layout == L.LAYOUT_CHUNK_BASED:
        cs = e.chunks.chunk_size  # type: ignore[union-attr]
        u = (cs.bit_length() - 1 - L.BLKSZBITS) | L.CHUNK_FORMAT_INDEXES
    else:
        u = n.blkaddr
    nlink = (
        2 + sum(1 for c in n.children.values() if c.entry.kind is Kind.DIR)
        if e.kind is Kind.DIR
        else 1
    )
    version = L.INODE_EXTENDED if n.extended else L.INODE_COMPACT
    fmt = L.i_format(version, n.layout)
    if n.extended:
        return L.erofs_inode_extended(
            fmt, 0, mode, 0, n.size, u, n.ino, 0, 0, MTIME, 0, nlink
        ).encode()
    return L.erofs_inode_compact(fmt, 0, mode, nlink, n.size, 0, u, n.ino, 0, 0, 0).encode()
