"""The Nix archive (NAR) format: a sans-io parser and encoder over one event model.

Grammar (every string is a little-endian u64 length, the bytes, zero padding to 8):

    nar       = "nix-archive-1" node
    node      = "(" "type" ( regular | symlink | directory ) ")"
    regular   = "regular" [ "executable" "" ] "contents" <u64 size> <bytes> <padding>
    symlink   = "symlink" "target" <target>
    directory = "directory" { "entry" "(" "name" <name> "node" node ")" }

Both sides work on events in NAR order: `Directory`, `Regular` (followed by its
`Contents` pieces), `Symlink`. Paths are bytes relative to the root (`b""` is the root,
components joined by `/`). Neither side does I/O: the parser is fed bytes and returns
events; the encoder is fed events and returns bytes. Both enforce the same rules, so
anything the encoder writes the parser accepts, and the parser accepts only the
canonical form Nix writes (which is what makes NarHash reproducible).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"nix-archive-1"
MAX_DEPTH = 64
MAX_NAME = 255
MAX_TARGET = 4095
# Longest structural token ("nix-archive-1"); a longer length field is not a NAR.
_MAX_TOKEN = 16


@dataclass(frozen=True, slots=True)
class Directory:
    path: bytes


@dataclass(frozen=True, slots=True)
class Regular:
    path: bytes
    size: int
    executable: bool = False


@dataclass(frozen=True, slots=True)
class Contents:
    """A piece of the preceding `Regular`'s bytes; the pieces add up to its size."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Symlink:
    path: bytes
    target: bytes


NarEvent = Directory | Regular | Contents | Symlink
Node = Directory | Regular | Symlink


class NarRule(enum.Enum):
    """Which rule a malformed NAR broke; the value is the human wording."""

    MAGIC = "does not start with the NAR magic 'nix-archive-1'"
    TOKEN = "unexpected token"
    PADDING = "non-zero padding"
    NODE_TYPE = "unknown node type"
    EXECUTABLE_MARKER = "executable marker has a non-empty value"
    NAME_INVALID = "invalid entry name (empty, '.', '..', or containing '/' or NUL)"
    NAME_TOO_LONG = f"entry name longer than {MAX_NAME} bytes"
    NAME_ORDER = "entry names not strictly sorted (unsorted or duplicate)"
    SYMLINK_EMPTY = "empty symlink target"
    SYMLINK_TOO_LONG = f"symlink target longer than {MAX_TARGET} bytes"
    SYMLINK_NUL = "symlink target contains NUL"
    DEPTH = f"tree deeper than {MAX_DEPTH} levels"
    TRUNCATED = "archive ends early"
    TRAILING = "data after the end of the archive"
    EVENT_ORDER = "events out of NAR order"


class NarError(ValueError):
    """A NAR (or an event stream) that breaks a rule; `offset` is the byte where it did."""

    def __init__(self, offset: int, rule: NarRule, detail: str = "") -> None:
        self.offset = offset
        self.rule = rule
        self.detail = detail
        msg = f"invalid NAR at byte {offset}: {rule.value}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


def check_name(name: bytes, offset: int = 0) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise NarError(offset, NarRule.NAME_INVALID, repr(name))
    if len(name) > MAX_NAME:
        raise NarError(offset, NarRule.NAME_TOO_LONG, f"{len(name)} bytes")


def check_target(target: bytes, offset: int = 0) -> None:
    if not target:
        raise NarError(offset, NarRule.SYMLINK_EMPTY)
    if len(target) > MAX_TARGET:
        raise NarError(offset, NarRule.SYMLINK_TOO_LONG, f"{len(target)} bytes")
    if b"\0" in target:
        raise NarError(offset, NarRule.SYMLINK_NUL)


def depth(path: bytes) -> int:
    return path.count(b"/") + 1 if path else 0


def split(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a relative path; the root has no name."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


# --- encoding ---------------------------------------------------------------------


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 8)


def _str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b + _pad(len(b))


_OPEN_TYPE = _str(b"(") + _str(b"type")
_ROOT = _str(MAGIC)
_DIR = _OPEN_TYPE + _str(b"directory")
_REG = _OPEN_TYPE + _str(b"regular")
_EXEC = _str(b"executable") + _str(b"")
_CONTENTS = _str(b"contents")
_LINK = _OPEN_TYPE + _str(b"symlink") + _str(b"target")
_ENTRY = _str(b"entry") + _str(b"(") + _str(b"name")
_NODE = _str(b"node")
_CLOSE = _str(b")")


class NarEncoder:
    """Turns events in NAR order into NAR bytes.

    `encode(Contents(data))` returns `data` itself, so file bytes are never copied;
    the padding and closing tokens after a file come out with the next event or
    `finish()`.
    """

    def __init__(self) -> None:
        self._open: list[bytes] = []  # directories whose node is still open
        self._last_child: list[bytes | None] = []  # last entry name per open directory
        self._leaf_open = False  # a file/symlink node awaits its closing tokens
        self._leaf_is_root = False
        self._remaining = 0  # content bytes still owed by the current Regular
        self._contents_size = 0
        self._started = False
        self._done = False
        self.offset = 0  # bytes produced so far

    def encode(self, event: NarEvent) -> bytes | memoryview:
        if isinstance(event, Contents):
            self.skip_contents(len(event.data))
            return event.data
        out = self._close_leaf()
        if self._done:
            raise NarError(self.offset, NarRule.EVENT_ORDER, "event after the root node was closed")
        path = event.path
        if not self._started:
            if path != b"":
                raise NarError(
                    self.offset, NarRule.EVENT_ORDER, f"first event must be the root, got {path!r}"
                )
            self._started = True
            out += _ROOT
        else:
            if path == b"":
                raise NarError(self.offset, NarRule.EVENT_ORDER, "second root node")
            parent, name = split(path)
            check_name(name, self.offset)
            while self._open and self._open[-1] != parent:
                out += self._close_dir()
            if not self._open:
                raise NarError(
                    self.offset, NarRule.EVENT_ORDER, f"{path!r} is not inside an open directory"
                )
            last = self._last_child[-1]
            if last is not None and name <= last:
                raise NarError(self.offset, NarRule.NAME_ORDER, f"{name!r} after {last!r}")
            self._last_child[-1] = name
            if depth(path) > MAX_DEPTH:
                raise NarError(self.offset, NarRule.DEPTH, repr(path))
            out += _ENTRY + _str(name) + _NODE
        if isinstance(event, Directory):
            out += _DIR
            self._open.append(path)
            self._last_child.append(None)
        elif isinstance(event, Regular):
            out += (
                _REG
                + (_EXEC if event.executable else b"")
                + _CONTENTS
                + struct.pack("<Q", event.size)
            )
            self._remaining = self._contents_size = event.size
            self._leaf_open, self._leaf_is_root = True, path == b""
        elif isinstance(event, Symlink):
            check_target(event.target, self.offset)
            out += _LINK + _str(event.target)
            self._contents_size = 0
            self._leaf_open, self._leaf_is_root = True, path == b""
        else:
            raise TypeError(f"not a NAR event: {event!r}")
        self.offset += len(out)
        return out

    def skip_contents(self, n: int) -> None:
        """Account for `n` content bytes written elsewhere (framing-only encoding)."""
        if n > self._remaining:
            raise NarError(
                self.offset,
                NarRule.EVENT_ORDER,
                f"{n} content bytes where {self._remaining} remain",
            )
        self._remaining -= n
        self.offset += n

    def finish(self) -> bytes:
        """Close every open node; the archive is complete after this."""
        if not self._started:
            raise NarError(self.offset, NarRule.EVENT_ORDER, "no root node")
        out = self._close_leaf()
        while self._open:
            out += self._close_dir()
        self._done = True
        self.offset += len(out)
        return out

    def _close_leaf(self) -> bytes:
        if not self._leaf_open:
            return b""
        if self._remaining:
            raise NarError(
                self.offset, NarRule.EVENT_ORDER, f"file still owes {self._remaining} content bytes"
            )
        self._leaf_open = False
        out = _pad(self._contents_size) + _CLOSE
        if self._leaf_is_root:
            self._done = True
        else:
            out += _CLOSE
        return out

    def _close_dir(self) -> bytes:
        path = self._open.pop()
        self._last_child.pop()
        if path == b"":
            self._done = True
            return _CLOSE
        return _CLOSE + _CLOSE


def encode(events: Iterable[NarEvent]) -> Iterator[bytes | memoryview]:
    """Stream the NAR for `events`."""
    enc = NarEncoder()
    for ev in events:
        piece = enc.encode(ev)
        if piece:
            yield piece
    yield enc.finish()


def encode_bytes(events: Iterable[NarEvent]) -> bytes:
    return b"".join(encode(events))


# --- parsing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Need:
    n: int


@dataclass(frozen=True, slots=True)
class _Stream:
    n: int


_Instr = _Need | _Stream | Directory | Regular | Symlink


class NarParser:
    """Fed NAR bytes in pieces of any size, returns events as they complete.

    Call `close()` at end of input: it raises `NarError(TRUNCATED)` if the archive is
    incomplete. Content comes out as `Contents` slices of what was fed, so a large
    file streams through without being held whole.
    """

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes of a token split across feeds
        self.offset = 0  # absolute offset of the next unconsumed byte
        self._grammar = self._nar()
        self._instr: _Instr | None = next(self._grammar)

    @property
    def finished(self) -> bool:
        return self._instr is None

    def feed(self, data: bytes | bytearray | memoryview) -> list[NarEvent]:
        """Consume `data`; return the events it completes.

        `Contents` events hold read-only views into `data` (no copy); they stay valid
        because `data` is taken as immutable bytes.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._instr is None:
            if data:
                raise NarError(self.offset, NarRule.TRAILING, f"{len(data)} bytes")
            return []
        if self._buf:
            # A token was split across feeds: join the leftover with the new bytes.
            src: bytes = bytes(self._buf) + data
            self._buf = bytearray()
        else:
            src = data
        view = memoryview(src)
        pos = 0
        end = len(src)
        events: list[NarEvent] = []
        while True:
            instr = self._instr
            if isinstance(instr, _Need):
                if end - pos < instr.n:
                    break
                chunk = src[pos : pos + instr.n]
                pos += instr.n
                self.offset += instr.n
                self._instr = self._resume(chunk)
            elif isinstance(instr, _Stream):
                n = min(end - pos, instr.n)
                if n:
                    events.append(Contents(view[pos : pos + n]))
                    pos += n
                    self.offset += n
                if n < instr.n:
                    self._instr = _Stream(instr.n - n)
                    break
                self._instr = self._resume(b"")
            elif instr is None:
                if end - pos:
                    raise NarError(self.offset, NarRule.TRAILING, f"{end - pos} bytes")
                break
            else:
                events.append(instr)
                self._instr = self._resume(None)
        if pos < end:
            self._buf = bytearray(view[pos:])
        return events

    def _resume(self, value: bytes | None) -> _Instr | None:
        try:
            return self._grammar.send(value)  # type: ignore[arg-type]
        except StopIteration:
            return None

    def close(self) -> None:
        if self._instr is not None:
            raise NarError(self.offset, NarRule.TRUNCATED)

    # The grammar as a generator: it yields _Need(n) to receive n bytes, _Stream(n) to
    # pass n content bytes through, and events to emit.

    def _string(self, limit: int, rule: NarRule) -> Generator[_Instr, bytes, bytes]:
        at = self.offset
        (n,) = struct.unpack("<Q", (yield _Need(8)))
        if n > limit:
            raise NarError(at, rule, f"length {n} exceeds {limit}")
        data = yield _Need(n)
        yield from self._padding(n)
        return data

    def _padding(self, n: int) -> Generator[_Instr, bytes, None]:
        if n % 8:
            at = self.offset
            if any((yield _Need(8 - n % 8))):
                raise NarError(at, NarRule.PADDING)

    def _expect(self, token: bytes) -> Generator[_Instr, bytes, None]:
        at = self.offset
        got = yield from self._string(_MAX_TOKEN, NarRule.TOKEN)
        if got != token:
            raise NarError(at, NarRule.TOKEN, f"expected {token.decode()!r}, got {got[:32]!r}")

    def _nar(self) -> Generator[_Instr, bytes, None]:
        at = self.offset
        (n,) = struct.unpack("<Q", (yield _Need(8)))
        if n != len(MAGIC) or (yield _Need(16)) != MAGIC + _pad(len(MAGIC)):
            raise NarError(at, NarRule.MAGIC)
        yield from self._node(b"")

    def _node(self, path: bytes) -> Generator[_Instr, bytes, None]:
        yield from self._expect(b"(")
        yield from self._expect(b"type")
        at = self.offset
        kind = yield from self._string(_MAX_TOKEN, NarRule.TOKEN)
        if kind == b"regular":
            at = self.offset
            tag = yield from self._string(_MAX_TOKEN, NarRule.TOKEN)
            executable = tag == b"executable"
            if executable:
                at = self.offset
                if (yield from self._string(_MAX_TOKEN, NarRule.EXECUTABLE_MARKER)) != b"":
                    raise NarError(at, NarRule.EXECUTABLE_MARKER)
                at = self.offset
                tag = yield from self._string(_MAX_TOKEN, NarRule.TOKEN)
            if tag != b"contents":
                raise NarError(at, NarRule.TOKEN, f"expected 'contents', got {tag[:32]!r}")
            (size,) = struct.unpack("<Q", (yield _Need(8)))
            yield Regular(path, size, executable)
            if size:
                yield _Stream(size)
            yield from self._padding(size)
        elif kind == b"symlink":
            yield from self._expect(b"target")
            at = self.offset
            target = yield from self._string(MAX_TARGET, NarRule.SYMLINK_TOO_LONG)
            check_target(target, at)
            yield Symlink(path, target)
        elif kind == b"directory":
            yield Directory(path)
            last: bytes | None = None
            while True:
                at = self.offset
                tag = yield from self._string(_MAX_TOKEN, NarRule.TOKEN)
                if tag == b")":
                    return
                if tag != b"entry":
                    raise NarError(at, NarRule.TOKEN, f"expected 'entry' or ')', got {tag[:32]!r}")
                yield from self._expect(b"(")
                yield from self._expect(b"name")
                at = self.offset
                name = yield from self._string(MAX_NAME, NarRule.NAME_TOO_LONG)
                check_name(name, at)
                if last is not None and name <= last:
                    raise NarError(at, NarRule.NAME_ORDER, f"{name!r} after {last!r}")
                last = name
                child = path + b"/" + name if path else name
                if depth(child) > MAX_DEPTH:
                    raise NarError(at, NarRule.DEPTH, repr(child[:200]))
                yield from self._expect(b"node")
                yield from self._node(child)
                yield from self._expect(b")")
        else:
            raise NarError(at, NarRule.NODE_TYPE, repr(kind))
        yield from self._expect(b")")


def parse(chunks: Iterable[bytes | memoryview]) -> Iterator[NarEvent]:
    """Parse a NAR given as an iterable of byte pieces; raises NarError."""
    parser = NarParser()
    for piece in chunks:
        yield from parser.feed(piece)
    parser.close()


def parse_bytes(data: bytes) -> list[NarEvent]:
    """Parse a whole NAR, merging each file's contents into one `Contents` event."""
    merged: list[NarEvent] = []
    pending: list[bytes] = []
    for ev in parse([data]):
        if isinstance(ev, Contents):
            pending.append(bytes(ev.data))
            continue
        if pending:
            merged.append(Contents(b"".join(pending)))
            pending = []
        merged.append(ev)
    if pending:
        merged.append(Contents(b"".join(pending)))
    return merged
