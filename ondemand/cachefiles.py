"""cachefiles ondemand messages, sans-io, exactly as `include/uapi/linux/cachefiles.h`:

    struct cachefiles_msg  { __u32 msg_id; __u32 opcode; __u32 len; __u32 object_id; __u8 data[]; }
    OPEN  (0): struct cachefiles_open { __u32 volume_key_size; __u32 cookie_key_size;
                                        __u32 fd; __u32 flags; __u8 data[]; }
               data: the volume key (NUL-terminated string, volume_key_size bytes with the
               NUL), then the cookie key (cookie_key_size bytes of binary)
    CLOSE (1): no payload
    READ  (2): struct cachefiles_read { __u64 off; __u64 len; }
    A read of /dev/cachefiles returns one whole message, at most CACHEFILES_MSG_MAX_SIZE.

Replies go the other way as text commands (`copen <msg_id>,<size or -errno>`) and, for a
READ, as data written to the object's anon fd followed by
`ioctl(anon_fd, CACHEFILES_IOC_READ_COMPLETE, msg_id)`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MSG_MAX_SIZE = 1024
OP_OPEN, OP_CLOSE, OP_READ = 0, 1, 2
IOC_READ_COMPLETE = 0x40049801  # _IOW(0x98, 1, int)

_HEADER = struct.Struct("<IIII")
_OPEN = struct.Struct("<IIII")
_READ = struct.Struct("<QQ")


class MessageError(ValueError):
    """Bytes that are not a cachefiles message; the daemon logs it and goes on."""


@dataclass(frozen=True, slots=True)
class Open:
    msg_id: int
    object_id: int
    volume_key: bytes  # without its NUL, e.g. b"erofs,<domain or fsid>"
    cookie_key: bytes  # e.g. the image's fsid or a device's tag
    fd: int  # the anon fd: the cache file to fill
    flags: int


@dataclass(frozen=True, slots=True)
class Close:
    msg_id: int
    object_id: int


@dataclass(frozen=True, slots=True)
class Read:
    msg_id: int
    object_id: int
    off: int
    len: int


Message = Open | Close | Read


def decode(raw: bytes) -> Message:
    if len(raw) < _HEADER.size:
        raise MessageError(f"a {len(raw)}-byte message is shorter than its header")
    if len(raw) > MSG_MAX_SIZE:
        raise MessageError(f"a {len(raw)}-byte message exceeds {MSG_MAX_SIZE} bytes")
    msg_id, opcode, length, object_id = _HEADER.unpack_from(raw)
    if length != len(raw):
        raise MessageError(f"message {msg_id} says {length} bytes but {len(raw)} came")
    body = raw[_HEADER.size :]
    if opcode == OP_OPEN:
        if len(body) < _OPEN.size:
            raise MessageError(f"OPEN {msg_id} is cut short")
        vsize, csize, fd, flags = _OPEN.unpack_from(body)
        keys = body[_OPEN.size :]
        if vsize + csize != len(keys) or vsize == 0:
            raise MessageError(f"OPEN {msg_id}: keys of {vsize} + {csize} bytes in {len(keys)}")
        volume = keys[:vsize]
        if volume[-1:] != b"\0":
            raise MessageError(f"OPEN {msg_id}: the volume key is not NUL-terminated")
        return Open(msg_id, object_id, volume[:-1], keys[vsize:], fd, flags)
    if opcode == OP_CLOSE:
        if body:
            raise MessageError(f"CLOSE {msg_id} carries {len(body)} unexpected bytes")
        return Close(msg_id, object_id)
    if opcode == OP_READ:
        if len(body) != _READ.size:
            raise MessageError(f"READ {msg_id} has a {len(body)}-byte body")
        off, n = _READ.unpack(body)
        return Read(msg_id, object_id, off, n)
    raise MessageError(f"message {msg_id} has unknown opcode {opcode}")


def encode(msg: Message) -> bytes:
    """The bytes the kernel sends (for the emulated device and fuzzing)."""
    if isinstance(msg, Open):
        body = (
            _OPEN.pack(len(msg.volume_key) + 1, len(msg.cookie_key), msg.fd, msg.flags)
            + msg.volume_key
            + b"\0"
            + msg.cookie_key
        )
        op = OP_OPEN
    elif isinstance(msg, Close):
        body, op = b"", OP_CLOSE
    else:
        body, op = _READ.pack(msg.off, msg.len), OP_READ
    return _HEADER.pack(msg.msg_id, op, _HEADER.size + len(body), msg.object_id) + body


def copen(msg_id: int, size_or_errno: int) -> bytes:
    """Answer an OPEN: the object's size, or a negative errno to refuse it."""
    return f"copen {msg_id},{size_or_errno}".encode()


def setup(cache_dir: str, tag: str) -> list[bytes]:
    """The commands that make a cachefiles instance serve EROFS ondemand."""
    return [f"dir {cache_dir}".encode(), f"tag {tag}".encode(), b"bind ondemand"]


RESTORE = b"restore"  # after a daemon restart: the kernel re-sends what was in flight
