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

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
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
from node.exchange.fetch import NoPolicy, Plan
from node.exchange.lazy import Links
from node.exchange.progress import Progress
from node.local.errors import StoreError
from node.local.image import image_of
from node.local.store import ReaderChunks
from ondemand import fanotify, holder, syscalls
from ondemand.cachefilesd import CacheDevice, CachefilesDaemon
from ondemand.filler import Filler
from store import nixcli, nixregister, restore, userfile
from store.export import ExportError
from store.manifest import Manifest
from store.nixcli import NixError, PathInfo
from store.nixdb import references_first
from store.path import StorePath

log = logging.getLogger(__name__)

FANOTIFY = "fanotify"
CACHEFILES = "cachefiles"
MATERIALIZE = "materialize"
BACKENDS = ("auto", FANOTIFY, CACHEFILES, MATERIALIZE)
KERNEL_BACKENDS = (FANOTIFY, CACHEFILES)
DOMAIN = "ferry"  # the EROFS fscache domain (cachefiles volume "erofs,ferry") every mount shares
MOUNTS_DIR = "mounts"
HOLDER_SOCKET = "fanotify.sock"
CACHE_HOLDER_SOCKET = "cachefiles.sock"
STATE = "mounts.json"
GC_ROOTS = "/nix/var/nix/gcroots/ferry"
ORPHAN_FDS = 4096
# What a mount table row may meet when served again: a malformed row, a path gone from
# the store, a directory gone, no backend on this boot.
UNSERVABLE = (
    KeyError,
    TypeError,
    ValueError,
    OSError,
    StoreError,
    ControlError,
)  # fd numbers a dead node's unanswered events may carry


def _deny_orphans(group: int) -> None:
    """Answer, with EIO, the events a dead node had read and not answered: the kernel
    knows them by the fd number they had in that node, so try every plausible number
    (the ones no event has are refused with ENOENT)."""
    for fd in range(ORPHAN_FDS):
        try:
            os.write(group, fanotify.deny(fd, errno.EIO))
        except OSError:
            pass


def _path_info(p: Plan) -> PathInfo:
    o = p.verdict.outcome
    return PathInfo(p.store_path, o.nar_hash, o.nar_size, o.references, p.manifest.deriver)


@dataclass
class Mounted:
    store_path: StorePath
    dir: str
    backend: str
    image: str | None = None
    chunks: dict[bytes, int] = field(default_factory=dict)  # digest -> length
    fsid: str | None = None  # cachefiles: the image's blob name
    # A realised store path: valid to Nix, a GC root of Nix's, left mounted when the
    # node stops (Nix still counts on it) and mounted again at the next start.
    lasting: bool = False


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
        self._unserved: list[dict[str, Any]] = []
        # Blocks streams kept open for readers' fetches (one round trip per cold read).
        self.links = Links(sessions.net, config.request_timeout)

    # --- the group and its filler, owned by the node's nursery

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.links.run)
            try:
                rows = self._load_state()
                group = None
                if os.path.exists(self._holder_socket()):
                    # A node before us died (or left mounts in place): its group is still held.
                    try:
                        group = await trio.to_thread.run_sync(holder.borrow, self._holder_socket())
                    except OSError as e:
                        log.warning("a fanotify holder socket is there but does not answer: %s", e)
                    else:
                        _deny_orphans(group)
                # No checkpoint from here to the filler's start: every mount in place is in
                # the slab map before the filler answers its first read (a read of a range
                # the map lacks would be let through to the holes).
                later = []
                for r in rows:
                    try:
                        if not self._serve_in_place(r, group is not None):
                            later.append(r)
                    except UNSERVABLE as e:
                        self._unservable(r, e)
                if group is not None:
                    self._attach(group)
                for r in later:
                    try:
                        await self._mount_again(r)
                    except UNSERVABLE as e:
                        self._unservable(r, e)
                self._save_state()
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

    def _start_holder(self, path: str | None = None, *args: str) -> int:
        """A new holder process, and the fd it holds (OSError, with the holder's reason,
        without root or kernel support). Default: the fanotify group's."""
        path = path or self._holder_socket()
        if not args:
            os.close(holder.new_group())  # fails at once where the holder would
        proc = subprocess.Popen(
            [sys.executable, "-m", "ondemand.holder", path, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        with proc.stdout:
            line = proc.stdout.readline()
            if line != b"ready\n":
                why = line.decode(errors="replace").strip() or f"exit status {proc.wait()}"
                raise OSError(f"the holder did not start: {why}")
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
        """Bind /dev/cachefiles for EROFS ondemand and start its daemon loop (once). The
        device fd is held by a holder process (closing it would withdraw the cache); a
        holder left by the last node is borrowed from, and the kernel asked to send again
        what that node had taken (`restore`). Tested on a real kernel in a VM
        (tests/vm) and against an emulated device."""
        if self.blobs is not None:
            return True
        store = self.store.store
        cache_dir = os.path.join(store.data_dir, "cachefiles")
        sock = os.path.join(self.data_dir, CACHE_HOLDER_SOCKET)
        try:
            os.makedirs(cache_dir, exist_ok=True)
            fd = None
            if os.path.exists(sock):
                try:
                    fd = holder.borrow(sock)
                    restore = True
                except OSError as e:
                    log.warning("a cachefiles holder socket is there but does not answer: %s", e)
                    os.unlink(sock)
            if fd is None:
                fd = self._start_holder(sock, "--cachefiles", cache_dir, DOMAIN)
            device = CacheDevice(fd, restore=restore)
        except OSError as e:
            self.cache_unavailable = (
                f"cannot bind /dev/cachefiles ({e.strerror or e}): it needs root and "
                "CONFIG_CACHEFILES_ONDEMAND; see `ferry doctor`"
            )
            return False
        self.blobs = StoreBlobs(
            DOMAIN, os.path.join(store.data_dir, "slabs"), self.slabs, {}, self._fetch, self._filled
        )
        self._cache_device = device
        self._cache_scope = trio.CancelScope()
        self._nursery.start_soon(self._run_cache_daemon, CachefilesDaemon(device, self.blobs))
        return True

    async def _run_cache_daemon(self, daemon: CachefilesDaemon) -> None:
        with self._cache_scope:
            await daemon.run()

    def _release_cachefiles(self) -> None:
        """Nothing is served through cachefiles any more: the holder drops the device."""
        if self.blobs is None:
            return
        self._cache_scope.cancel()
        os.close(self._cache_device.fd)
        self.blobs = None
        try:
            holder.release(os.path.join(self.data_dir, CACHE_HOLDER_SOCKET))
        except OSError as e:
            log.warning("the cachefiles holder did not answer: %s", e)

    async def _unmount_all(self) -> None:
        """A stopping node unmounts what it can, and keeps the table: the next start
        mounts it all again. Realised store paths stay mounted (Nix counts on them), and
        so does a busy mount; with either, the holder stays too, and readers wait for the
        next node rather than see holes."""
        left: set[str] = set()  # backends with mounts left in place
        for m in list(self.table.values()):
            if m.backend not in KERNEL_BACKENDS:
                continue
            if m.lasting:
                left.add(m.backend)
                continue
            try:
                syscalls.umount(m.dir)
            except OSError as e:
                log.warning(
                    "%s stays mounted (%s): the next node start serves it", m.dir, e.strerror
                )
                left.add(m.backend)
                continue
            if m.image:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(m.image)
        await self._detach(release=FANOTIFY not in left)
        if CACHEFILES not in left:
            self._release_cachefiles()

    def _save_state(self) -> None:
        rows = [
            {
                "store_path": str(m.store_path),
                "dir": m.dir,
                "backend": m.backend,
                "image": m.image,
                "fsid": m.fsid,
                "lasting": m.lasting,
            }
            for m in self.table.values()
        ]
        # Rows this start could not serve (no backend now): kept for a start that can.
        rows += [r for r in self._unserved if r["dir"] not in self.table]
        userfile.write_atomically(
            os.path.join(self.data_dir, STATE), json.dumps(rows).encode(), "the mount table"
        )

    def _load_state(self) -> list[dict[str, Any]]:
        """The mount table of the last node: mounts it left in place (it died, they were
        busy, or they are realised store paths) are served again; the others (it
        stopped, or the machine rebooted) are mounted again."""
        path = os.path.join(self.data_dir, STATE)
        try:
            with open(path) as f:
                rows = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read (%s): no mounts restored", path, e)
            return []
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def _unservable(self, r: dict[str, Any], e: Exception) -> None:
        log.warning("cannot mount %s on %s again: %s", r.get("store_path"), r.get("dir"), e)
        if isinstance(r.get("dir"), str):
            self._unserved.append(r)

    def _serve_in_place(self, r: dict[str, Any], have_group: bool) -> bool:
        """Serve a mount the last node left in place (no checkpoint); False if it must be
        mounted again (`_mount_again`)."""
        sp = StorePath.parse(r["store_path"])
        target, backend = r["dir"], r["backend"]
        if backend == MATERIALIZE:
            self.table[target] = Mounted(sp, target, MATERIALIZE)
            return True
        if backend not in KERNEL_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        if not os.path.ismount(target):
            return False
        served = have_group if backend == FANOTIFY else self._ensure_cachefiles(restore=True)
        if not served:
            # Nothing answers its reads (its holder is gone): mount it afresh.
            syscalls.umount(target, detach=True)
            return False
        self._serve_again(sp, r, bool(r.get("lasting")))
        return True

    async def _mount_again(self, r: dict[str, Any]) -> None:
        sp = StorePath.parse(r["store_path"])
        target, backend, lasting = r["dir"], r["backend"], bool(r.get("lasting"))
        if r.get("image"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(r["image"])
        if not os.path.isdir(target):
            if not lasting:
                log.warning("%s is gone: its mount of %s is forgotten", target, sp)
                return
            os.makedirs(target)
        if backend == CACHEFILES:
            self._ensure_cachefiles(restore=True)
        backend = await self._choose(backend, lazy=True)
        self._check_mount_point(target, backend)
        manifest = self.store.store.manifest(sp)
        self.table[target] = await self._kernel_mount(sp, manifest, target, backend, lasting)
        if lasting:
            self._gc_root(sp, True)
        log.info("mounted %s on %s again", sp, target)

    def _serve_again(self, sp: StorePath, r: dict[str, Any], lasting: bool) -> None:
        store = self.store.store
        slab_rows = store.index.slabs()
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
            lasting,
        )
        if m.fsid and self.blobs is not None:
            self.blobs.images[m.fsid.encode()] = r["image"]
            self.blobs.slab_ids.update({x.name: x.id for x in slab_rows})
        self.table[r["dir"]] = m
        log.info("serving %s on %s again", sp, r["dir"])

    async def _fetch(self, digests: list[bytes], *, ahead: bool = False) -> dict[bytes, bytes]:
        try:
            return await self.sessions.transfer(self.links, digests, ahead=ahead)
        except NoPolicy as e:
            log.warning("ondemand fetch of %d chunks: %s", len(digests), e)
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
        self._need_policy()
        target = os.path.abspath(target)
        if target in self.table:
            raise ControlError(
                f"{target} is already a ferry mount (of {self.table[target].store_path})"
            )
        backend = await self._choose(backend, lazy=False)
        self._check_mount_point(target, backend)
        async with self.sessions.recording() as (fetch, local):
            plans = await fetch.resolve(sp, closure=False)
            if backend == MATERIALIZE:
                await fetch.complete(plans, roots={str(sp)})
            else:
                todo = [p for p in plans if not p.complete]
                if todo:
                    await local.reserve(todo, roots={str(sp)})
        if backend == MATERIALIZE:
            if os.path.isdir(target):
                os.rmdir(target)
            await self._write_out(sp, plans[0].manifest, target)
            m = Mounted(sp, target, MATERIALIZE)
        else:
            m = await self._kernel_mount(sp, plans[0].manifest, target, backend)
        self.table[target] = m
        self._save_state()
        log.info("mounted %s on %s (%s)", sp, target, backend)
        return self._row(m)

    async def realise(
        self,
        targets: list[StorePath],
        lazy: bool,
        backend: str,
        on_progress: Callable[[Progress], Awaitable[None]] | None = None,
    ) -> api.Realised:
        """Each target's closure made valid in the node's Nix store: paths Nix lacks are
        mounted at their store paths (lazy) or written there whole, made GC roots of
        Nix's while mounted, and registered with the quorum's NarHash, NarSize,
        references and deriver, so unmodified Nix and every program see them whole."""
        self._need_policy()
        nix_store = self.config.nix_store or None
        if nixcli.store_root(nix_store):
            # Nix 2.8's --register-validity looks for the paths at their logical names,
            # not under the chroot store's root ("getting status of '/nix/store/…'").
            raise ControlError(
                f"ferry realise makes paths valid in a store at its real place; nix_store = "
                f"{nix_store!r} is a chroot store, where Nix cannot register them: use "
                "`ferry fetch` and the gateway there",
                Failure.USAGE,
            )
        if lazy:
            backend = await self._choose(backend, lazy=True)
        for t in targets:
            if t.store_dir != self.config.store_dir:
                raise ControlError(
                    f"{t} is not in this node's store directory {self.config.store_dir}",
                    Failure.USAGE,
                )
        async with self.sessions.recording(on_progress=on_progress) as (fetch, local):
            plans: dict[str, Plan] = {}
            for t in targets:
                for p in await fetch.resolve(t, closure=True):
                    plans.setdefault(str(p.store_path), p)
            try:
                invalid = await trio.to_thread.run_sync(
                    nixregister.invalid, [p.store_path for p in plans.values()], nix_store
                )
            except NixError as e:
                raise ControlError(f"cannot ask Nix which paths it has: {e}") from None
            order = references_first(
                {k: [str(r) for r in p.verdict.outcome.references] for k, p in plans.items()}
            )
            todo = [plans[k] for k in order if plans[k].store_path in invalid]
            for p in todo:
                self._check_store_dir_entry(str(p.store_path))
            roots = {str(p.store_path) for p in todo}
            if lazy:
                held = [p for p in todo if not p.complete]
                if held:
                    await local.reserve(held, roots=roots)
            else:
                await fetch.complete(todo, roots=roots)
        done: list[Plan] = []
        try:
            for p in todo:
                target = str(p.store_path)
                if lazy and target not in self.table:
                    os.makedirs(target, exist_ok=True)
                    m = await self._kernel_mount(
                        p.store_path, p.manifest, target, backend, lasting=True
                    )
                    self.table[target] = m
                    self._save_state()
                    self._gc_root(p.store_path, True)
                elif not lazy:
                    if os.path.isdir(target) and not os.path.ismount(target):
                        os.rmdir(target)  # empty (checked above)
                    await self._write_out(p.store_path, p.manifest, target)
                done.append(p)
            infos = [_path_info(p) for p in todo]
            await trio.to_thread.run_sync(nixregister.register, infos, nix_store)
        except (NixError, ControlError, OSError) as e:
            # Nix does not know them: nothing of ours may sit at their names.
            with trio.CancelScope(shield=True):
                for p in done:
                    await self._withdraw(str(p.store_path), p.store_path)
            if isinstance(e, ControlError):
                raise
            raise ControlError(f"cannot make {len(todo)} paths valid: {e}") from None
        log.info("realised %d paths (%s)", len(todo), backend if lazy else "whole")
        rows = []
        for k in order:
            mounted = self.table.get(k)
            if k not in roots:
                rows.append(api.RealisedPath(k, "valid", None, None, None))
            elif mounted is not None and mounted.lasting:
                row = self._row(mounted)
                rows.append(
                    api.RealisedPath(
                        k, "mounted", mounted.backend, row.bytes_present, row.bytes_total
                    )
                )
            else:
                rows.append(api.RealisedPath(k, "written", None, None, None))
        return api.Realised(tuple(rows))

    def _need_policy(self) -> None:
        if self.sessions.policy is None:
            raise ControlError(
                "this node has no trust policy, so it cannot accept paths: start it with --policy FILE"
            )

    async def _choose(self, backend: str, *, lazy: bool) -> str:
        if backend == "auto":
            backend = (
                FANOTIFY
                if await self._ensure_group()
                else CACHEFILES
                if self._ensure_cachefiles()
                else MATERIALIZE
            )
            if backend == MATERIALIZE and lazy:
                raise ControlError(
                    f"no lazy backend on this machine ({self.unavailable}; "
                    f"{self.cache_unavailable}): realise without --lazy, or see `ferry doctor`"
                )
            if backend != FANOTIFY:
                log.info("mounting with %s: %s", backend, self.unavailable)
        elif backend == FANOTIFY and not await self._ensure_group():
            raise ControlError(self.unavailable)
        elif backend == CACHEFILES and not self._ensure_cachefiles():
            raise ControlError(self.cache_unavailable)
        elif backend == MATERIALIZE and lazy:
            raise ControlError("materialize is not lazy: realise without --lazy", Failure.USAGE)
        return backend

    def _check_mount_point(self, target: str, backend: str) -> None:
        if backend in KERNEL_BACKENDS:
            if not os.path.isdir(target):
                raise ControlError(f"{target} is not a directory: create the mount point first")
            if os.listdir(target):
                # A mount would hide what is there, and a program would see the path
                # instead of the files it expects: never over something.
                raise ControlError(
                    f"{target} is not empty: mount on an empty directory (what is there would be hidden)"
                )
        elif os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
            raise ControlError(f"{target} exists and is not an empty directory")

    def _check_store_dir_entry(self, target: str) -> None:
        """A path Nix holds invalid may still lie in the store directory (a build that
        failed half-way): Nix would delete it first; ferry leaves that to Nix."""
        if target in self.table or not os.path.lexists(target):
            return
        if not os.path.isdir(target) or os.path.islink(target) or os.listdir(target):
            raise ControlError(
                f"{target} exists, but Nix does not hold it as valid: remove it "
                f"(`nix-store --delete {target}` as root) and try again"
            )

    def _gc_root(self, sp: StorePath, add: bool) -> None:
        """A mounted store path is a GC root of Nix's: Nix's collector cannot delete a
        read-only mount (it would drop the path from its database, fail, and fail every
        collection after). `ferry umount` lets it go."""
        d = GC_ROOTS
        link = os.path.join(d, sp.base_name)
        if add:
            os.makedirs(d, exist_ok=True)
            tmp = f"{link}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(str(sp), tmp)
            os.replace(tmp, link)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    async def _write_out(self, sp: StorePath, manifest: Manifest, target: str) -> None:
        # A reader of its own: a long write-out must not hold up serving peers.
        reader = self.store.store.reader()
        try:
            await trio.to_thread.run_sync(restore.restore, manifest, ReaderChunks(reader), target)
        except (restore.RestoreError, ExportError, OSError) as e:
            raise ControlError(f"cannot write {sp} to {target}: {e}") from None
        finally:
            reader.close()

    async def _kernel_mount(
        self, sp: StorePath, manifest: Manifest, target: str, backend: str, lasting: bool = False
    ) -> Mounted:
        try:
            # The image names the slabs as they are: no session may add one meanwhile.
            async with self.store.write_lock:
                m, places, present, inodes, devices = await self.store.write(
                    self._prepare, sp, manifest, target, backend
                )
        except (StoreError, OSError) as e:
            raise ControlError(f"cannot mount {sp}: {e}") from None
        m.lasting = lasting
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
        return m

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
        if m.lasting:
            # A realised store path: Nix holds it valid, so it goes from Nix too, and only
            # if nothing valid still refers to it.
            nix_store = self.config.nix_store or None
            try:
                users = await trio.to_thread.run_sync(
                    nixregister.referrers, m.store_path, nix_store
                )
            except NixError as e:
                raise ControlError(f"cannot ask Nix what refers to {m.store_path}: {e}") from None
            if users:
                more = f" and {len(users) - 1} more" if len(users) > 1 else ""
                raise ControlError(
                    f"{m.store_path} is still needed by {users[0]}{more}: unmount or delete "
                    "those first"
                )
            await self._withdraw(target, m.store_path)
            try:
                await trio.to_thread.run_sync(nixregister.delete, m.store_path, nix_store)
            except NixError as e:
                raise ControlError(f"unmounted {target}, but Nix did not delete it: {e}") from None
        else:
            await self._unmount(m)
            del self.table[target]
            self._save_state()
        await self._release_if_idle()
        return api.Unmounted(target, str(m.store_path), m.backend)

    async def _unmount(self, m: Mounted) -> None:
        if m.backend in KERNEL_BACKENDS:
            try:
                await trio.to_thread.run_sync(syscalls.umount, m.dir)
            except OSError as e:
                raise ControlError(
                    f"cannot unmount {m.dir}: {e.strerror} (is a program using it?)"
                ) from None
            if m.image:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(m.image)
            if m.fsid and self.blobs is not None:
                self.blobs.images.pop(m.fsid.encode(), None)

    async def _withdraw(self, target: str, sp: StorePath) -> None:
        """Unmount a store path ferry mounted there and let Nix's collector have it."""
        m = self.table.get(target)
        if m is None:
            return
        self._gc_root(sp, False)
        try:
            await self._unmount(m)
        except ControlError:
            self._gc_root(sp, True)  # still mounted: still kept from Nix's collector
            raise
        del self.table[target]
        self._save_state()

    async def _release_if_idle(self) -> None:
        # Nothing mounted through a backend: no kernel fd left behind.
        if self.group is not None and not any(x.backend == FANOTIFY for x in self.table.values()):
            await self._detach(release=True)
        if not any(x.backend == CACHEFILES for x in self.table.values()):
            self._release_cachefiles()

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
