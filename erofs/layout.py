"""EROFS on-disk structures, named and laid out as the kernel's `fs/erofs/erofs_fs.h`
(Linux 6.x; the subset ferry writes: uncompressed, no xattrs, 4 KiB blocks, chunk-based
files with per-chunk device ids, and a device table).

    offset 1024   erofs_super_block (128 bytes)
    devt_slotoff  erofs_deviceslot × extra_devices (128 bytes each)
    meta_blkaddr  the metadata area: inodes at 32-byte slots (nid = offset / 32),
                  each followed by its inline tail or its chunk indexes (8-byte aligned)
    data blocks   directory blocks and non-inline file data, by block address

A chunk-based inode's `i_u` holds `erofs_inode_chunk_info`: chunkbits − blkszbits in the
low 5 bits, plus EROFS_CHUNK_FORMAT_INDEXES, so each chunk has an
`erofs_inode_chunk_index` {advise, device_id, blkaddr}; device_id 0 is the image itself,
k ≥ 1 the k-th device of the table (the k-th `device=` mount option). A directory block
is an array of `erofs_dirent` {nid, nameoff, file_type, reserved} followed by the names,
sorted; the last name of a block ends at the block's (or directory's) end or a NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0xE0F5E1E2
SUPER_OFFSET = 1024
BLKSZBITS = 12
BLOCK = 1 << BLKSZBITS
ISLOTBITS = 5  # inodes sit at 32-byte slots
SLOT = 1 << ISLOTBITS
NULL_ADDR = 0xFFFFFFFF  # a chunk with no blocks: reads as zeros

FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
FEATURE_INCOMPAT_DEVICE_TABLE = 0x8

# i_format: bit 0 the inode version, bits 1-3 the data layout
INODE_COMPACT = 0
INODE_EXTENDED = 1
LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
LAYOUT_CHUNK_BASED = 4

CHUNK_FORMAT_BLKBITS_MASK = 0x1F
CHUNK_FORMAT_INDEXES = 0x20

FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_SYMLINK = 0, 1, 2, 7

S_IFDIR, S_IFREG, S_IFLNK = 0o040000, 0o100000, 0o120000


class ImageError(ValueError):
    """Bytes that are not an EROFS image ferry can read; the message says where."""


@dataclass(frozen=True, slots=True)
class erofs_super_block:
    SIZE = 128
    _FMT = "<IIIBBHQQIIII16s16sIHHHBBIQ24x"

    checksum: int
    feature_compat: int
    blkszbits: int
    sb_extslots: int
    root_nid: int
    inos: int
    build_time: int
    build_time_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    feature_incompat: int
    available_compr_algs: int
    extra_devices: int
    devt_slotoff: int
    dirblkbits: int
    xattr_prefix_count: int
    xattr_prefix_start: int
    packed_nid: int

    def encode(self) -> bytes:
        return struct.pack(
            self._FMT,
            MAGIC,
            self.checksum,
            self.feature_compat,
            self.blkszbits,
            self.sb_extslots,
            self.root_nid,
            self.inos,
            self.build_time,
            self.build_time_nsec,
            self.blocks,
            self.meta_blkaddr,
            self.xattr_blkaddr,
            self.uuid,
            self.volume_name,
            self.feature_incompat,
            self.available_compr_algs,
            self.extra_devices,
            self.devt_slotoff,
            self.dirblkbits,
            self.xattr_prefix_count,
            self.xattr_prefix_start,
            self.packed_nid,
        )

    @classmethod
    def decode(cls, raw: bytes) -> erofs_super_block:
        if len(raw) < cls.SIZE:
            raise ImageError(f"image of {len(raw)} bytes ends inside the superblock")
        magic, *fields = struct.unpack(cls._FMT, raw[: cls.SIZE])
        if magic != MAGIC:
            raise ImageError(f"no EROFS magic at offset {SUPER_OFFSET} (found {magic:#x})")
        return cls(*fields)


assert struct.calcsize(erofs_super_block._FMT) == erofs_super_block.SIZE


@dataclass(frozen=True, slots=True)
class erofs_deviceslot:
    SIZE = 128
    _FMT = "<64sII56x"

    tag: bytes
    blocks: int
    mapped_blkaddr: int

    def encode(self) -> bytes:
        return struct.pack(self._FMT, self.tag, self.blocks, self.mapped_blkaddr)

    @classmethod
    def decode(cls, raw: bytes) -> erofs_deviceslot:
        return cls(*struct.unpack(cls._FMT, raw))


assert struct.calcsize(erofs_deviceslot._FMT) == erofs_deviceslot.SIZE


@dataclass(frozen=True, slots=True)
class erofs_inode_compact:
    SIZE = 32
    _FMT = "<HHHHIIIIHHI"

    format: int  # i_format
    xattr_icount: int
    mode: int
    nlink: int
    size: int
    reserved: int
    u: int  # raw_blkaddr, or the chunk info of a chunk-based file
    ino: int
    uid: int
    gid: int
    reserved2: int

    def encode(self) -> bytes:
        return struct.pack(
            self._FMT,
            self.format,
            self.xattr_icount,
            self.mode,
            self.nlink,
            self.size,
            self.reserved,
            self.u,
            self.ino,
            self.uid,
            self.gid,
            self.reserved2,
        )

    @classmethod
    def decode(cls, raw: bytes) -> erofs_inode_compact:
        return cls(*struct.unpack(cls._FMT, raw))


@dataclass(frozen=True, slots=True)
class erofs_inode_extended:
    SIZE = 64
    _FMT = "<HHHHQIIIIQII16x"

    format: int
    xattr_icount: int
    mode: int
    reserved: int
    size: int
    u: int
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int

    def encode(self) -> bytes:
        return struct.pack(
            self._FMT,
            self.format,
            self.xattr_icount,
            self.mode,
            self.reserved,
            self.size,
            self.u,
            self.ino,
            self.uid,
            self.gid,
            self.mtime,
            self.mtime_nsec,
            self.nlink,
        )

    @classmethod
    def decode(cls, raw: bytes) -> erofs_inode_extended:
        return cls(*struct.unpack(cls._FMT, raw))


assert struct.calcsize(erofs_inode_compact._FMT) == erofs_inode_compact.SIZE
assert struct.calcsize(erofs_inode_extended._FMT) == erofs_inode_extended.SIZE


@dataclass(frozen=True, slots=True)
class erofs_inode_chunk_index:
    SIZE = 8
    _FMT = "<HHI"

    advise: int
    device_id: int
    blkaddr: int

    def encode(self) -> bytes:
        return struct.pack(self._FMT, self.advise, self.device_id, self.blkaddr)

    @classmethod
    def decode(cls, raw: bytes) -> erofs_inode_chunk_index:
        return cls(*struct.unpack(cls._FMT, raw))


@dataclass(frozen=True, slots=True)
class erofs_dirent:
    SIZE = 12
    _FMT = "<QHBx"

    nid: int
    nameoff: int
    file_type: int

    def encode(self) -> bytes:
        return struct.pack(self._FMT, self.nid, self.nameoff, self.file_type)

    @classmethod
    def decode(cls, raw: bytes) -> erofs_dirent:
        return cls(*struct.unpack(cls._FMT, raw))


def i_format(version: int, layout: int) -> int:
    return version | layout << 1
