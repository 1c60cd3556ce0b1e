"""`ferry mount`: store paths visible at once, their file data fetched on first read.

fanotify backend (root, Linux 6.14+ with file-backed EROFS): the path is recorded with
holes for its missing chunks, its EROFS image is written to `<data-dir>/mounts/`, every
slab is marked for pre-content events *before* the kernel opens it, and the image is
mounted with `mount(2)` and `device=` options. Reads of holes wait in the kernel until
the filler has fetched the chunks from peers. cachefiles backend (Linux 5.19–7.1 with
cachefiles ondemand): the same image, served with the slabs as fscache blobs through
/dev/cachefiles. materialize backend (anyone): the path is fetched whole and written as
a plain tree.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

from node.daemon import api
from node.daemon.blobs import StoreBlobs
from node.daemon.config import NodeConfig
from node.daemon.control import ControlError, Failure
from node.daemon.nodestore import NodeStore
from node.daemon.session import FetchSessions
from node.daemon.slabmap import SlabMap
from node.exchange.fetch import FetchError, FetchRefused, NoPolicy
from node.local.errors import StoreError
from node.local.image import image_of
from node.local.store import ReaderChunks
from ondemand import fanotify, holder, syscalls
from ondemand.cachefilesd import CacheDevice, CachefilesDaemon
from ondemand.filler import Filler
from store import restore, userfile
from store.export import ExportError
from store.manifest import Manifest
from store.path import StorePath, StorePathError

log = logging.getLogger(__name__)

FANOTIFY = "fanotify"
CACHEFILES = "cachefiles"
MATERIALIZE = "materialize"
BACKENDS = ("auto", FANOTIFY, CACHEFILES, MATERIALIZE)
KERNEL_BACKENDS = (FANOTIFY, CACHEFILES)
DOMAIN = "ferry"  # the EROFS fscache domain (cachefiles volume "erofs,ferry") every mount shares
MOUNTS_DIR = "mounts"
HOLDER_SOCKET = "fanotify.sock"
STATE = "mounts.json"
ORPHAN_FDS = 4096  # fd numbers a dead node's unanswered events may carry


def _deny_orphans(group: int) -> None:
    """Answer, with EIO, the events a dead node had read and not answered: the kernel
    knows them by the fd number they had in that node, so try every plausible number
    (the ones no event has are refused with ENOENT)."""
    for fd in range(ORPHAN_FDS):
        try:
            os.write(group, fanotify.deny(fd, errno.EIO))
        except OSError:
            pass


@dataclass
class Mounted:
    store_path: StorePath
    dir: str
    backend: str
    image: str | None = None
    chunks: dict[bytes, int] = field(default_factory=dict)  # digest -> length
    fsid: str | None = None  # cachefiles: the image's blob name


class Mounts:
    def __init__(
        self, data_dir: str, config: NodeConfig, store: NodeStore, sessions: FetchSessions
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.store = store
        self.sessions = sessions
        self.table: dict[str, Mounted] = {}
        self.slabs = SlabMap()
        self.group: int | None = None
        self.unavailable = "the node has not started"
        self.filler: Filler | None = None
        self._nursery: trio.Nursery
        self._filler_scope = trio.CancelScope()
        self._filler_done = trio.Event()
        self.blobs: StoreBlobs | None = None  # the cachefiles backend, once started
        self.cache_unavailable = "not tried"
        self._stopping = False  # the node is stopping: no new group may be attached

    # --- the group and its filler, owned by the node's nursery

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                if os.path.exists(self._holder_socket()):
                    # A node before us died (or left busy mounts): its group is still held.
                    try:
                        group = await trio.to_thread.run_sync(holder.borrow, self._holder_socket())
                    except OSError as e:
                        log.warning("a fanotify holder socket is there but does not answer: %s", e)
                    else:
                        _deny_orphans(group)
                        self._attach(group)
                self._restore_state()
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._stopping = True
                with trio.CancelScope(shield=True):
                    await self._unmount_all()

    def _holder_socket(self) -> str:
        return os.path.join(self.data_dir, HOLDER_SOCKET)

    def _attach(self, group: int) -> None:
        self.group = group
        self.filler = Filler(
            group,
            self.slabs,
            self._fetch,
            deadline=self.config.read_deadline,
            on_filled=self._filled,
        )
        self._filler_scope = trio.CancelScope()
        self._filler_done = trio.Event()
        self._nursery.start_soon(
            self._run_filler, self.filler, self._filler_scope, self._filler_done
        )

    async def _run_filler(self, filler: Filler, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                await filler.run()
        finally:
            done.set()

    async def _detach(self, release: bool) -> None:
        """Stop serving the group; with `release`, the holder drops it too (nothing is
        mounted). Without, it keeps it, and readers of busy mounts wait for the next node."""
        if self.group is None:
            return
        self._filler_scope.cancel()
        await self._filler_done.wait()  # every answer in flight is written before the fd goes
        os.close(self.group)
        self.group = None
        self.filler = None
        if release:
            try:
                holder.release(self._holder_socket())
            except OSError as e:
                log.warning("the fanotify holder did not answer: %s", e)

    def _start_holder(self) -> int:
        """A new holder process and its group (OSError without root or kernel support)."""
        path = self._holder_socket()
        os.close(holder.new_group())  # fails at once where the holder would
        proc = subprocess.Popen(
            [sys.executable, "-m", "ondemand.holder", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        with proc.stdout:
            if proc.stdout.readline() != b"ready\n":
                raise OSError(f"the fanotify holder did not start (exit status {proc.wait()})")
        return holder.borrow(path)

    async def _ensure_group(self) -> bool:
        if self.group is None:
            try:
                # Shielded: a holder started as the node stops must still be released, and
                # that needs its group, which a cancelled thread call would throw away.
                with trio.CancelScope(shield=True):
                    group: int | None = await trio.to_thread.run_sync(self._start_holder)
                    if self._stopping and group is not None:
                        # The node stopped meanwhile (its unmount-all has run): nothing
                        # will use the group, and the holder must not outlive the node.
                        os.close(group)
                        await trio.to_thread.run_sync(holder.release, self._holder_socket())
                        group = None
                if group is None:
                    self.unavailable = "the node is stopping"
                    return False
                self._attach(group)
            except OSError as e:
                self.unavailable = (
                    f"no fanotify pre-content group ({e.strerror or e}): it needs root and Linux "
                    "6.14+; use --backend materialize"
                )
                return False
        return True

    def _ensure_cachefiles(self, restore: bool = False) -> bool:
        """Bind /dev/cachefiles for EROFS ondemand and start its daemon loop (once). Never
        run against a real kernel here (these machines lack CONFIG_CACHEFILES_ONDEMAND):
        its loop and the store side are tested against an emulated device."""
        if self.blobs is not None:
            return True
        store = self.store.store
        cache_dir = os.path.join(store.data_dir, "cachefiles")
        try:
            os.makedirs(cache_dir, exist_ok=True)
            device = CacheDevice(cache_dir, DOMAIN, restore=restore)
        except OSError as e:
            self.cache_unavailable = (
                f"cannot bind /dev/cachefiles ({e.strerror or e}): it needs root and "
                "CONFIG_CACHEFILES_ONDEMAND; see `ferry doctor`"
            )
            return False
        self.blobs = StoreBlobs(
            DOMAIN, os.path.join(store.data_dir, "slabs"), self.slabs, {}, self._fetch, self._filled
        )
        self._nursery.start_soon(CachefilesDaemon(device, self.blobs).run)
        return True

    async def _unmount_all(self) -> None:
        """A stopping node unmounts what it can. A busy mount stays, and so does the
        holder: its readers wait for the next node rather than see holes."""
        for m in list(self.table.values()):
            if m.backend not in KERNEL_BACKENDS:
                continue
            try:
                syscalls.umount(m.dir)
            except OSError as e:
                log.warning(
                    "%s stays mounted (%s): the next node start serves it", m.dir, e.strerror
                )
                continue
            if m.image:
                os.unlink(m.image)
            del self.table[m.dir]
        self._save_state()
        await self._detach(release=not any(m.backend == FANOTIFY for m in self.table.values()))

    def _save_state(self) -> None:
        rows = [
            {
                "store_path": str(m.store_path),
                "dir": m.dir,
                "backend": m.backend,
                "image": m.image,
                "fsid": m.fsid,
            }
            for m in self.table.values()
        ]
        userfile.write_atomically(
            os.path.join(self.data_dir, STATE), json.dumps(rows).encode(), "the mount table"
        )

    def _restore_state(self) -> None:
        """Mounts a previous node left (it died, or they were busy): serve them again."""
        path = os.path.join(self.data_dir, STATE)
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, ValueError):
            return
        store = self.store.store
        slab_rows = store.index.slabs()
        for r in rows:
            try:
                sp = StorePath.parse(r["store_path"])
                if r["backend"] == MATERIALIZE:
                    self.table[r["dir"]] = Mounted(sp, r["dir"], MATERIALIZE)
                    continue
                served = (
                    self.group is not None
                    if r["backend"] == FANOTIFY
                    else self._ensure_cachefiles(restore=True)
                )
                if not (served and os.path.ismount(r["dir"])):
                    if r.get("image") and os.path.exists(r["image"]):
                        os.unlink(r["image"])
                    continue
                manifest = store.manifest(sp)
                rows_ = store.index.chunks(list(set(manifest.chunk_digests())))
                if not self.slabs.inode_of_slab:
                    for row in slab_rows:
                        path_ = os.path.join(store.data_dir, "slabs", row.name)
                        self.slabs.inode_of_slab[os.stat(path_).st_ino] = row.id
                self.slabs.add(
                    {d: (x.slab, x.offset) for d, x in rows_.items()},
                    manifest,
                    {d for d, x in rows_.items() if x.present},
                )
                m = Mounted(
                    sp,
                    r["dir"],
                    r["backend"],
                    r["image"],
                    {d: n for _, _, n, d in manifest.chunk_spans()},
                    r.get("fsid"),
                )
                if m.fsid and self.blobs is not None:
                    self.blobs.images[m.fsid.encode()] = r["image"]
                    self.blobs.slab_ids.update({x.name: x.id for x in slab_rows})
                self.table[r["dir"]] = m
                log.info("serving %s on %s again", sp, r["dir"])
            except (KeyError, TypeError, OSError, StoreError, StorePathError) as e:
                log.warning("the mount table entry %s cannot be restored: %s", r, e)
        self._save_state()

    async def _fetch(self, digests: list[bytes]) -> dict[bytes, bytes]:
        sizes = {}
        for m in self.table.values():
            sizes.update({d: m.chunks[d] for d in digests if d in m.chunks})
        try:
            return await self.sessions.transfer(sizes)
        except NoPolicy as e:
            log.warning("ondemand fetch of %d chunks: %s", len(sizes), e)
            return {}

    async def _filled(self, digests: list[bytes]) -> None:
        def work() -> None:
            ix = self.store.store.index
            rows = ix.chunks(digests)
            with ix.transaction():
                ix.set_present([r.id for r in rows.values()], True)

        await self.store.write(work)
        self.slabs.have.update(digests)

    # --- control API

    async def mount(self, sp: StorePath, target: str, backend: str) -> api.MountRow:
        if self.sessions.policy is None:
            raise ControlError(
                "this node has no trust policy, so it cannot accept paths: start it with --policy FILE"
            )
        target = os.path.abspath(target)
        if target in self.table:
            raise ControlError(
                f"{target} is already a ferry mount (of {self.table[target].store_path})"
            )
        if backend == "auto":
            backend = (
                FANOTIFY
                if await self._ensure_group()
                else CACHEFILES
                if self._ensure_cachefiles()
                else MATERIALIZE
            )
            if backend != FANOTIFY:
                log.info("mounting with %s: %s", backend, self.unavailable)
        elif backend == FANOTIFY and not await self._ensure_group():
            raise ControlError(self.unavailable)
        elif backend == CACHEFILES and not self._ensure_cachefiles():
            raise ControlError(self.cache_unavailable)
        if backend in KERNEL_BACKENDS:
            if not os.path.isdir(target):
                raise ControlError(f"{target} is not a directory: create the mount point first")
            if os.listdir(target):
                # A mount would hide what is there, and a program would see the path
                # instead of the files it expects: never over something.
                raise ControlError(
                    f"{target} is not empty: mount on an empty directory (what is there would be hidden)"
                )
        if (
            backend == MATERIALIZE
            and os.path.exists(target)
            and (not os.path.isdir(target) or os.listdir(target))
        ):
            raise ControlError(f"{target} exists and is not an empty directory")
        async with self.sessions.recording() as (fetch, local):
            try:
                plans = await fetch.resolve(sp, closure=False)
                if backend == MATERIALIZE:
                    await fetch.complete(plans, roots={str(sp)})
                else:
                    todo = [p for p in plans if not p.complete]
                    if todo:
                        await local.reserve(todo, roots={str(sp)})
            except FetchRefused as e:
                raise ControlError(str(e), Failure.REFUSED) from None
            except FetchError as e:
                raise ControlError(str(e)) from None
            manifest = plans[0].manifest
            if backend == MATERIALIZE:
                if os.path.isdir(target):
                    os.rmdir(target)
                # A reader of its own: a long write-out must not hold up serving peers.
                reader = self.store.store.reader()
                try:
                    await trio.to_thread.run_sync(
                        restore.restore, manifest, ReaderChunks(reader), target
                    )
                except (restore.RestoreError, ExportError, OSError) as e:
                    raise ControlError(f"cannot write {sp} to {target}: {e}") from None
                finally:
                    reader.close()
                self.table[target] = Mounted(sp, target, MATERIALIZE)
                self._save_state()
                return self._row(self.table[target])
            try:
                # The image names the slabs as they are: no session may add one meanwhile.
                async with self.store.write_lock:
                    m, places, present, inodes, devices = await self.store.write(
                        self._prepare, sp, manifest, target, backend
                    )
            except (StoreError, OSError) as e:
                raise ControlError(f"cannot mount {sp}: {e}") from None
        # Known to the filler before the kernel can ask (the slabs are marked already).
        self.slabs.inode_of_slab.update(inodes)
        self.slabs.add(places, manifest, present)
        try:
            if backend == FANOTIFY:
                await trio.to_thread.run_sync(syscalls.mount_erofs, m.image, target, devices)
            else:
                assert self.blobs is not None and m.fsid is not None and m.image is not None
                self.blobs.images[m.fsid.encode()] = m.image
                self.blobs.slab_ids.update({r.name: r.id for r in self.store.store.index.slabs()})
                await trio.to_thread.run_sync(syscalls.mount_erofs_fscache, target, m.fsid, DOMAIN)
        except OSError as e:
            raise ControlError(f"cannot mount {sp} on {target}: {e.strerror}") from None
        self.table[target] = m
        self._save_state()
        log.info("mounted %s on %s (%s)", sp, target, backend)
        return self._row(m)

    def _prepare(
        self, sp: StorePath, manifest: Manifest, target: str, backend: str
    ) -> tuple[Mounted, dict[bytes, tuple[int, int]], set[bytes], dict[int, int], list[str]]:
        """Write the image and mark the slabs (on the writer thread); returns the mount,
        where its chunks are, which are present, the slabs' inode numbers, and the
        image's devices in table order."""
        store = self.store.store
        img = image_of(store, sp)
        directory = os.path.join(store.data_dir, MOUNTS_DIR)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{sp.hash_part}-{abs(hash(target)):x}.erofs")
        userfile.write_atomically(path, img.data, "a mount image")
        inodes = {}
        for row, dev in zip(store.index.slabs(), img.devices):
            # A slab of reserved holes may not exist yet: EROFS needs the file, of full size.
            with open(dev, "ab") as f:
                if os.fstat(f.fileno()).st_size < row.size:
                    os.ftruncate(f.fileno(), row.size)
            if backend != FANOTIFY:
                continue
            assert self.group is not None
            # Before the kernel opens the slab: a read that could beat the mark would see holes.
            syscalls.fanotify_mark(self.group, fanotify.FAN_MARK_ADD, fanotify.FAN_PRE_ACCESS, dev)
            inodes[os.stat(dev).st_ino] = row.id
        rows = img.chunks
        lengths = {d: n for _, _, n, d in manifest.chunk_spans()}
        fsid = (
            f"ferry-{os.path.basename(path)[: -len('.erofs')]}" if backend == CACHEFILES else None
        )
        return (
            Mounted(sp, target, backend, path, lengths, fsid),
            {d: (r.slab, r.offset) for d, r in rows.items()},
            {d for d, r in rows.items() if r.present},
            inodes,
            list(img.devices),
        )

    async def umount(self, target: str) -> api.Unmounted:
        target = os.path.abspath(target)
        m = self.table.get(target)
        if m is None:
            raise ControlError(f"{target} is not a ferry mount (see `ferry mounts`)", Failure.USAGE)
        if m.backend in KERNEL_BACKENDS:
            try:
                await trio.to_thread.run_sync(syscalls.umount, target)
            except OSError as e:
                raise ControlError(
                    f"cannot unmount {target}: {e.strerror} (is a program using it?)"
                ) from None
            if m.image:
                os.unlink(m.image)
            if m.fsid and self.blobs is not None:
                self.blobs.images.pop(m.fsid.encode(), None)
        del self.table[target]
        self._save_state()
        if self.group is not None and not any(x.backend == FANOTIFY for x in self.table.values()):
            await self._detach(release=True)  # nothing mounted: no group left behind
        return api.Unmounted(target, str(m.store_path), m.backend)

    def report(self) -> api.MountTable:
        return api.MountTable(tuple(self._row(m) for m in self.table.values()))

    def _row(self, m: Mounted) -> api.MountRow:
        total = sum(m.chunks.values())
        present = sum(n for d, n in m.chunks.items() if d in self.slabs.have)
        kernel = m.backend in KERNEL_BACKENDS
        return api.MountRow(
            dir=m.dir,
            store_path=str(m.store_path),
            backend=m.backend,
            bytes_present=present if kernel else None,
            bytes_total=total if kernel else None,
        )
