"""Reads the EROFS images ferry writes (and the same subset written by others): the
superblock, the device table, inodes, directories and chunk indexes.

Every offset read from the image is checked against the image's length before use, a
walk visits each inode at most once and stops at `MAX_INODES`, and every failure is an
`ImageError` naming what was wrong: a crafted image can make the reader refuse, never
hang, crash or read outside the bytes it was given.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass

from erofs import layout as L
from erofs.layout import ImageError

MAX_INODES = 10_000_000
MAX_DEPTH = 4096


@dataclass(frozen=True, slots=True)
class Inode:
    nid: int
    mode: int
    nlink: int
    size: int
    layout: int
    extended: bool
    u: int  # raw block address, or the chunk info
    data_at: int  # image offset just after the inode (inline tail or chunk indexes)

    @property
    def kind(self) -> str:
        if stat.S_ISDIR(self.mode):
            return "dir"
        if stat.S_ISLNK(self.mode):
            return "symlink"
        if stat.S_ISREG(self.mode):
            return "file"
        return "other"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    device_id: int  # 0: the image itself; k: the k-th device of the table
    blkaddr: int  # NULL_ADDR for a hole


@dataclass(frozen=True, slots=True)
class Walked:
    path: bytes
    inode: Inode


class Image:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sb = L.erofs_super_block.decode(
            self._slice(L.SUPER_OFFSET, L.erofs_super_block.SIZE, "superblock")
        )
        if self.sb.blkszbits != L.BLKSZBITS:
            raise ImageError(f"block size 2^{self.sb.blkszbits}: only 4 KiB blocks are supported")
        self.meta = self.sb.meta_blkaddr * L.BLOCK
        if self.meta >= len(data):
            raise ImageError(
                f"metadata area at block {self.sb.meta_blkaddr} lies past the image's end"
            )
        self.devices = [
            L.erofs_deviceslot.decode(
                self._slice(
                    self.sb.devt_slotoff * L.erofs_deviceslot.SIZE + i * L.erofs_deviceslot.SIZE,
                    L.erofs_deviceslot.SIZE,
                    f"device slot {i}",
                )
            )
            for i in range(self.sb.extra_devices)
        ]

    def _slice(self, at: int, n: int, what: str) -> bytes:
        if at < 0 or n < 0 or at + n > len(self.data):
            raise ImageError(
                f"{what} at {at} (+{n} bytes) lies outside the {len(self.data)}-byte image"
            )
        return self.data[at : at + n]

    # --- inodes

    def inode(self, nid: int) -> Inode:
        at = self.meta + nid * L.SLOT
        head = self._slice(at, L.erofs_inode_compact.SIZE, f"inode {nid}")
        fmt = int.from_bytes(head[:2], "little")
        version, layout = fmt & 1, (fmt >> 1) & 7
        if fmt >> 4:
            raise ImageError(f"inode {nid}: unknown format bits {fmt:#x}")
        if version == L.INODE_EXTENDED:
            ie = L.erofs_inode_extended.decode(
                self._slice(at, L.erofs_inode_extended.SIZE, f"inode {nid}")
            )
            mode, nlink, size, u, xattr, isize = (
                ie.mode,
                ie.nlink,
                ie.size,
                ie.u,
                ie.xattr_icount,
                ie.SIZE,
            )
        else:
            ic = L.erofs_inode_compact.decode(head)
            mode, nlink, size, u, xattr, isize = (
                ic.mode,
                ic.nlink,
                ic.size,
                ic.u,
                ic.xattr_icount,
                ic.SIZE,
            )
        if layout not in (L.LAYOUT_FLAT_PLAIN, L.LAYOUT_FLAT_INLINE, L.LAYOUT_CHUNK_BASED):
            raise ImageError(f"inode {nid}: data layout {layout} (compressed?) is not supported")
        xattr_size = 0 if xattr == 0 else 12 + (xattr - 1) * 4
        return Inode(
            nid, mode, nlink, size, layout, version == L.INODE_EXTENDED, u, at + isize + xattr_size
        )

    def read(self, ino: Inode, start: int = 0, n: int | None = None) -> bytes:
        """Bytes kept in the image: a directory's, a symlink's, a small file's."""
        if ino.layout == L.LAYOUT_CHUNK_BASED:
            raise ImageError(f"inode {ino.nid}: its data is in chunks on other devices")
        end = ino.size if n is None else min(ino.size, start + n)
        out = bytearray()
        pos = start
        full = ino.size // L.BLOCK * L.BLOCK if ino.layout == L.LAYOUT_FLAT_INLINE else ino.size
        while pos < end:
            if pos < full:
                k = min(end, (pos // L.BLOCK + 1) * L.BLOCK) - pos
                out += self._slice(ino.u * L.BLOCK + pos, k, f"data of inode {ino.nid}")
            else:
                k = end - pos
                tail_at = ino.data_at + (pos - full)
                if (tail_at % L.BLOCK) + k > L.BLOCK and k <= L.BLOCK:
                    raise ImageError(f"inode {ino.nid}: inline data crosses a block boundary")
                out += self._slice(tail_at, k, f"inline data of inode {ino.nid}")
            pos += k
        return bytes(out)

    def chunk_size(self, ino: Inode) -> int:
        bits = (ino.u & L.CHUNK_FORMAT_BLKBITS_MASK) + L.BLKSZBITS
        if bits > 40:
            raise ImageError(f"inode {ino.nid}: chunk size 2^{bits} is absurd")
        return 1 << bits

    def chunks(self, ino: Inode) -> list[ChunkRef]:
        if ino.layout != L.LAYOUT_CHUNK_BASED:
            raise ImageError(f"inode {ino.nid} is not chunk-based")
        if not ino.u & L.CHUNK_FORMAT_INDEXES:
            raise ImageError(
                f"inode {ino.nid}: block-map chunks (without device ids) are not supported"
            )
        cs = self.chunk_size(ino)
        count = -(-ino.size // cs)
        at = -(-ino.data_at // 8) * 8
        raw = self._slice(
            at, count * L.erofs_inode_chunk_index.SIZE, f"chunk indexes of inode {ino.nid}"
        )
        out = []
        for i in range(count):
            ix = L.erofs_inode_chunk_index.decode(raw[i * 8 : i * 8 + 8])
            if ix.blkaddr != L.NULL_ADDR and ix.device_id > len(self.devices):
                raise ImageError(
                    f"inode {ino.nid} chunk {i}: device {ix.device_id} is not in the "
                    f"{len(self.devices)}-device table"
                )
            out.append(ChunkRef(ix.device_id, ix.blkaddr))
        return out

    # --- directories

    def entries(self, ino: Inode) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of a directory, in on-disk order."""
        if ino.kind != "dir":
            raise ImageError(f"inode {ino.nid} is not a directory")
        if ino.size > len(self.data):
            raise ImageError(
                f"directory inode {ino.nid} claims {ino.size} bytes, more than the image"
            )
        out: list[tuple[bytes, int, int]] = []
        for pos in range(0, ino.size, L.BLOCK):
            blk = self.read(ino, pos, L.BLOCK)
            if len(blk) < L.erofs_dirent.SIZE:
                raise ImageError(
                    f"directory inode {ino.nid}: a block of {len(blk)} bytes holds no entry"
                )
            first = L.erofs_dirent.decode(blk[: L.erofs_dirent.SIZE])
            count = first.nameoff // L.erofs_dirent.SIZE
            if first.nameoff % L.erofs_dirent.SIZE or not 0 < first.nameoff <= len(blk):
                raise ImageError(
                    f"directory inode {ino.nid}: bad first name offset {first.nameoff}"
                )
            heads = [L.erofs_dirent.decode(blk[i * 12 : i * 12 + 12]) for i in range(count)]
            for i, d in enumerate(heads):
                end = heads[i + 1].nameoff if i + 1 < count else len(blk)
                if not d.nameoff <= end <= len(blk) or d.nameoff < first.nameoff:
                    raise ImageError(
                        f"directory inode {ino.nid}: entry {i} has name bounds {d.nameoff}..{end}"
                    )
                name = blk[d.nameoff : end]
                if i + 1 == count:
                    name = name.split(b"\0", 1)[0]
                if not 0 < len(name) <= 255:
                    raise ImageError(
                        f"directory inode {ino.nid}: entry {i} has a {len(name)}-byte name"
                    )
                out.append((name, d.nid, d.file_type))
        return out

    def walk(self) -> Iterator[Walked]:
        """Every inode reachable from the root, each once, parents before children."""
        root = self.inode(self.sb.root_nid)
        if root.kind != "dir":
            raise ImageError("the root inode is not a directory")
        seen = {root.nid}
        todo: list[tuple[bytes, Inode, int]] = [(b"", root, 0)]
        while todo:
            path, ino, depth = todo.pop()
            yield Walked(path, ino)
            if ino.kind != "dir":
                continue
            if depth >= MAX_DEPTH:
                raise ImageError(f"directories nest deeper than {MAX_DEPTH} at {path[:200]!r}")
            children = []
            for name, nid, _ in self.entries(ino):
                if name in (b".", b".."):
                    continue
                if b"/" in name:
                    raise ImageError(
                        f"directory inode {ino.nid} holds a name with a slash: {name[:80]!r}"
                    )
                if nid in seen:
                    raise ImageError(
                        f"inode {nid} is reached twice (a directory loop or hard link)"
                    )
                seen.add(nid)
                if len(seen) > MAX_INODES:
                    raise ImageError(f"more than {MAX_INODES} inodes")
                child = self.inode(nid)
                children.append((path + b"/" + name if path else name, child, depth + 1))
            todo.extend(reversed(children))

    def lookup(self, path: bytes) -> Inode:
        ino = self.inode(self.sb.root_nid)
        for part in [p for p in path.split(b"/") if p]:
            found = [nid for name, nid, _ in self.entries(ino) if name == part]
            if not found:
                raise ImageError(f"{path!r}: no {part!r} in the image")
            ino = self.inode(found[0])
        return ino
