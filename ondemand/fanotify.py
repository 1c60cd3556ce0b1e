"""fanotify pre-content events and responses, sans-io (`include/uapi/linux/fanotify.h`,
Linux 6.14+): bytes read from a `FAN_CLASS_PRE_CONTENT` group in, events out; a verdict
in, the bytes to write back out.

    struct fanotify_event_metadata {      24 bytes
        __u32 event_len; __u8 vers; __u8 reserved; __u16 metadata_len;
        __aligned_u64 mask; __s32 fd; __s32 pid; };
    then info records, each  { __u8 info_type; __u8 pad; __u16 len; ... }
    FAN_EVENT_INFO_TYPE_RANGE (6): { hdr; __u32 pad; __u64 offset; __u64 count; }
    struct fanotify_response { __s32 fd; __u32 response; }
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

METADATA_VERSION = 3
FAN_CLASS_PRE_CONTENT = 0x08
FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_PRE_ACCESS = 0x00100000
FAN_MARK_ADD = 0x01
FAN_MARK_REMOVE = 0x02
FAN_ALLOW = 0x01
FAN_DENY = 0x02
INFO_TYPE_RANGE = 6

_META = struct.Struct("<IBBHQii")
_INFO = struct.Struct("<BBH")
_RANGE = struct.Struct("<IQQ")
_RESPONSE = struct.Struct("<iI")


class FanotifyError(ValueError):
    """Bytes that are not a well-formed event stream."""


@dataclass(frozen=True, slots=True)
class Event:
    fd: int  # an fd for the marked file, opened for us without generating events; close it
    pid: int
    mask: int
    offset: int | None  # the range the access needs (pre-content events carry one)
    count: int | None

    @property
    def pre_access(self) -> bool:
        return bool(self.mask & FAN_PRE_ACCESS)


class EventReader:
    """Feed what `read()` on the group returned; get whole events back."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data
        out = []
        pos = 0
        while len(buf) - pos >= _META.size:
            event_len, vers, _, meta_len, mask, fd, pid = _META.unpack_from(buf, pos)
            if vers != METADATA_VERSION:
                raise FanotifyError(f"event metadata version {vers}, expected {METADATA_VERSION}")
            if meta_len < _META.size or event_len < meta_len:
                raise FanotifyError(f"event of {event_len} bytes with {meta_len} bytes of metadata")
            if len(buf) - pos < event_len:
                break
            offset = count = None
            info = pos + meta_len
            end = pos + event_len
            while info < end:
                if end - info < _INFO.size:
                    raise FanotifyError("an info record header is cut short")
                itype, _, ilen = _INFO.unpack_from(buf, info)
                if ilen < _INFO.size or info + ilen > end:
                    raise FanotifyError(f"info record of {ilen} bytes in an event of {event_len}")
                if itype == INFO_TYPE_RANGE:
                    if ilen < _INFO.size + _RANGE.size:
                        raise FanotifyError(f"range record of {ilen} bytes")
                    _, offset, count = _RANGE.unpack_from(buf, info + _INFO.size)
                info += ilen
            out.append(Event(fd, pid, mask, offset, count))
            pos = end
        self._buf = buf[pos:]
        return out


def allow(fd: int) -> bytes:
    return _RESPONSE.pack(fd, FAN_ALLOW)


def deny(fd: int, errno: int) -> bytes:
    """A refusal the reader sees as `errno` (FAN_DENY_ERRNO, pre-content groups only)."""
    return _RESPONSE.pack(fd, FAN_DENY | (errno & 0xFF) << 24)


def encode_event(ev: Event) -> bytes:
    """The bytes the kernel would send for `ev` (for tests and the simulator)."""
    info = b""
    if ev.offset is not None:
        info = _INFO.pack(INFO_TYPE_RANGE, 0, _INFO.size + _RANGE.size) + _RANGE.pack(
            0, ev.offset, ev.count or 0
        )
    return (
        _META.pack(_META.size + len(info), METADATA_VERSION, 0, _META.size, ev.mask, ev.fd, ev.pid)
        + info
    )
