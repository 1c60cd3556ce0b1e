"""The fanotify pre-content backend's loop: answer every access to a marked slab, after
making the chunks it needs (and, for sequential reads, the ones after) present.

A chunk is fetched once however many readers wait for it; fetched bytes are written
through the event's own fd (which generates no event, so the loop never waits on itself),
and the reader is let through once they are in the page cache; they are synced, in
batches, before the store is told they are present. A chunk that cannot be had
within the deadline is answered with EIO: a reader gets an error, never the zeros of a
hole. Events for chunks already present are answered at once.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ondemand import fanotify, syscalls
from ondemand.readahead import Readahead

log = logging.getLogger(__name__)

READ = 64 << 10
INLINE_WRITE = 256 << 10  # fetched bytes written on the event loop, at most
AHEAD_GROUP = 4 << 20  # readahead is fetched, and written, in groups of about this many bytes


@dataclass(frozen=True, slots=True)
class ChunkAt:
    digest: bytes
    offset: int  # in the slab
    length: int
    file: object  # which file it belongs to (for readahead)
    index: int  # its position in that file


class SlabChunks(Protocol):
    """Where chunks lie in the marked slabs, and which are there."""

    def covering(self, fd: int, offset: int, count: int) -> list[ChunkAt] | None:
        """The chunks of mounted paths in that range of the slab `fd` is open on; None
        if that file is no slab of a mount known here."""
        ...

    def file_chunks(self, file: object) -> Sequence[ChunkAt]: ...
    def present(self, digest: bytes) -> bool:
        """In the slab: written (perhaps not yet synced), so a reader may have it."""
        ...

    def written(self, digests: Sequence[bytes]) -> None:
        """These are in the slabs now (in the page cache; `on_filled` says once synced)."""
        ...


class Fetch(Protocol):
    def __call__(
        self, digests: list[bytes], *, ahead: bool = False
    ) -> Awaitable[dict[bytes, bytes]]:
        """The verified bytes of those of `digests` it could get; `ahead`: readahead,
        which no reader waits on yet."""
        ...


class Filler:
    def __init__(
        self,
        group: int,
        chunks: SlabChunks,
        fetch: Fetch,
        *,
        deadline: float,
        on_filled: Callable[[list[bytes]], Awaitable[None]],
    ) -> None:
        self.group = group
        self.chunks = chunks
        self.fetch = fetch
        self.deadline = deadline
        self.on_filled = on_filled
        self.readahead = Readahead()
        self.own_pid = os.getpid()
        self.fetched_bytes = 0
        self.events = 0
        self._inflight: dict[bytes, trio.Event] = {}
        self._arrived = trio.Event()  # replaced on each event: wakes wait_for_events
        self._nursery: trio.Nursery  # run's: answers and readahead live in it
        self._unsynced: list[tuple[int, list[bytes]]] = []  # (fd on the slab, chunks written)
        self._sync_wanted = trio.Event()

    async def run(self) -> None:
        reader = fanotify.EventReader()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sync)
            while True:
                await trio.lowlevel.wait_readable(self.group)
                try:
                    data = os.read(self.group, READ)
                except BlockingIOError:
                    continue
                for ev in reader.feed(data):
                    self.events += 1
                    nursery.start_soon(self._answer, ev)
                self._arrived.set()
                self._arrived = trio.Event()

    async def wait_for_events(self, n: int) -> None:
        """Until `n` events have come in since the start (for tests and `ferry mounts`)."""
        while self.events < n:
            await self._arrived.wait()

    async def _answer(self, ev: fanotify.Event) -> None:
        # Refusal unless proven otherwise: a cancelled or failed answer must never let a
        # reader through to a hole.
        verdict = fanotify.deny(ev.fd, errno.EIO)
        try:
            if ev.offset is None or not ev.count or ev.pid == self.own_pid:
                # Not a ranged access, or our own: the node reads only chunks it has and
                # writes the ones it fetches; holding those would deadlock on itself.
                verdict = fanotify.allow(ev.fd)
            else:
                covered = self.chunks.covering(ev.fd, ev.offset, ev.count)
                if covered is None:
                    # Marked, so a slab of ours, but of no mount known: its holes are not
                    # data. (Never the case once mounts are restored before the filler.)
                    log.warning("a read of a slab no known mount uses: EIO")
                    return
                asked = covered
                ahead = [c for c in self._with_readahead(asked) if c not in asked]
                for group in _groups(ahead, AHEAD_GROUP):
                    # Fetched while the reader goes on: its next reads find them here. In
                    # groups, each written as it comes, so the first are there soonest.
                    # Through an fd of our own on the same open file (an event's fd
                    # raises no events), since this one is closed with the verdict.
                    self._nursery.start_soon(self._prefetch, group, os.dup(ev.fd))
                with trio.move_on_after(self.deadline) as wait:
                    await self._ensure(asked, ev.fd)
                if all(self.chunks.present(c.digest) for c in asked):
                    verdict = fanotify.allow(ev.fd)
                else:
                    log.warning(
                        "slab range %d+%d: %s: EIO",
                        ev.offset,
                        ev.count,
                        f"chunks not fetched within the read deadline ({self.deadline:.0f} s)"
                        if wait.cancelled_caught
                        else "no peer gave its chunks",
                    )
        except Exception:  # a bug here must not leave a reader blocked forever
            log.exception("answering a fanotify event")
        finally:
            # No checkpoint below, so a cancellation cannot skip the verdict.
            try:
                os.write(self.group, verdict)
            finally:
                os.close(ev.fd)

    async def _sync(self) -> None:
        """Written chunks to disk, then to the store as present, in batches: a reader
        never waits on a sync or a commit."""
        try:
            while True:
                await self._sync_wanted.wait()
                self._sync_wanted = trio.Event()
                await self._flush()
        finally:
            await self._flush()  # a stopping node still records what it wrote

    async def _flush(self) -> None:
        batch, self._unsynced = self._unsynced, []
        if not batch:
            return
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_sync_files, [fd for fd, _ in batch])
                await self.on_filled([d for _, ds in batch for d in ds])
        except Exception:
            log.exception("recording fetched chunks (they are fetched again when read)")
        finally:
            for fd, _ in batch:
                os.close(fd)

    async def _prefetch(self, ahead: list[ChunkAt], fd: int) -> None:
        try:
            with trio.move_on_after(self.deadline):
                await self._ensure(ahead, fd, ahead=True)
        except Exception:  # readahead is a guess: a reader asks again
            log.exception("reading ahead")
        finally:
            os.close(fd)

    def _with_readahead(self, asked: list[ChunkAt]) -> list[ChunkAt]:
        out = {c.digest: c for c in asked}
        by_file: dict[object, list[ChunkAt]] = {}
        for c in asked:
            by_file.setdefault(c.file, []).append(c)
        for file, cs in by_file.items():
            all_chunks = self.chunks.file_chunks(file)
            chunk_size = all_chunks[0].length  # every chunk but a file's last is full
            span = self.readahead.plan(
                file,
                min(c.index for c in cs),
                max(c.index for c in cs),
                len(all_chunks),
                chunk_size,
            )
            for i in span:
                out.setdefault(all_chunks[i].digest, all_chunks[i])
        return [
            c
            for c in out.values()
            if not self.chunks.present(c.digest) and c.digest not in self._inflight
        ]

    async def _ensure(self, want: list[ChunkAt], fd: int, *, ahead: bool = False) -> None:
        mine = [
            c for c in want if c.digest not in self._inflight and not self.chunks.present(c.digest)
        ]
        others = [self._inflight[c.digest] for c in want if c.digest in self._inflight]
        for c in mine:
            self._inflight[c.digest] = trio.Event()
        try:
            if mine:
                got = await self.fetch([c.digest for c in mine], ahead=ahead)
                done = [c for c in mine if c.digest in got]
                if done:
                    pieces = [(c.offset, got[c.digest]) for c in done]
                    if sum(c.length for c in done) <= INLINE_WRITE:
                        _write_all(fd, pieces)  # to the page cache: less than a thread trip
                    else:
                        await trio.to_thread.run_sync(_write_all, fd, pieces)
                    self.fetched_bytes += sum(c.length for c in done)
                    # A reader may have them now: they are in the page cache, which is
                    # what it reads. The store counts them only once they are on disk
                    # (`_sync`), so a crash before that fetches them again.
                    self.chunks.written([c.digest for c in done])
                    self._unsynced.append((os.dup(fd), [c.digest for c in done]))
                    self._sync_wanted.set()
        finally:
            for c in mine:
                self._inflight.pop(c.digest).set()
        for e in others:
            await e.wait()


def _groups(chunks: list[ChunkAt], limit: int) -> list[list[ChunkAt]]:
    out: list[list[ChunkAt]] = []
    size = limit
    for c in chunks:
        if size + c.length > limit:
            out.append([])
            size = 0
        out[-1].append(c)
        size += c.length
    return out


def _write_all(fd: int, pieces: list[tuple[int, bytes]]) -> None:
    for offset, data in pieces:
        syscalls.pwrite_all(fd, data, offset)


def _sync_files(fds: list[int]) -> None:
    """fdatasync each file once, however many of `fds` are open on it."""
    done = set()
    for fd in fds:
        ino = os.fstat(fd).st_ino
        if ino not in done:
            os.fdatasync(fd)  # on disk before the store says present
            done.add(ino)
