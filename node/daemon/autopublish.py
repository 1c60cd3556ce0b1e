"""Publishing without anyone typing `ferry publish`: the node drains its outbox
(outbox.py), which Nix's post-build hook and the store watcher fill, and answers the
bulk publish requests of `ferry publish --closure/--all`.

Paths are read from Nix's database (store/nixdb.py), published references first in
batches (one sync and one transaction each), signed with the node's `publish_key`, and
announced batch by batch while the next one is built."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import trio

from node.daemon import api
from node.daemon.config import NodeConfig
from node.daemon.nodestore import NodeStore
from node.daemon.outbox import Entry, Outbox, OutboxError
from node.local.publish import Bulk, already_published, publish_store_paths
from store import nixdb
from store.nixcli import NixError, PathInfo
from store.path import StorePath
from trust import keyfile
from trust.claim import SignedClaim
from trust.key import SecretKey

log = logging.getLogger(__name__)

T = TypeVar("T")

WATCH_EVERY = 1.0  # seconds between looks at Nix's database for new paths
TAKE = 1024  # outbox entries handled at once
RETRY_AFTER = 30.0  # seconds before entries that failed for a reason outside ferry are retried

Announce = Callable[[Sequence[SignedClaim], Sequence[StorePath]], Awaitable[None]]
OnBatch = Callable[[Bulk, Bulk], None]


class AutoPublish:
    def __init__(
        self, data_dir: str, config: NodeConfig, store: NodeStore, announce: Announce
    ) -> None:
        self.config = config
        self.store = store
        self._announce = announce
        self.outbox = Outbox(data_dir)
        self.key: SecretKey | None = (
            keyfile.load_secret(config.publish_key) if config.publish_key else None
        )
        self._outbox_use = trio.CapacityLimiter(1)  # one thread at a time on its connection
        self._wake = trio.Event()
        self._batches_send, self._batches = trio.open_memory_channel[Bulk](16)
        self._told_unsigned = False

    def close(self) -> None:
        self.outbox.close()

    def wake(self) -> None:
        self._wake.set()

    async def _outbox(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._outbox_use)

    async def waiting(self) -> int:
        return await self._outbox(self.outbox.waiting)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.key is None and self.config.watch_store:
            log.warning(
                "watch_store is on but publish_key is not set: paths are published unsigned, "
                "and peers with a trust policy will not accept them"
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announcer)
            if self.config.watch_store:
                await nursery.start(self._watch)
            nursery.start_soon(self._drain)
            task_status.started()

    # --- bulk publishing (control requests and the outbox share it)

    async def publish(
        self,
        paths: Sequence[str],
        nix_store: str | None,
        key: SecretKey | None,
        *,
        closure: bool,
        every: bool = False,
        root: bool = True,
        on_plan: Callable[[int, int], None] | None = None,
        on_batch: OnBatch | None = None,
    ) -> Bulk:
        """Publish Nix store paths (with their closures, or the whole store with
        `every`) that this store does not hold yet; references first. `on_plan` hears
        how many paths and NAR bytes that is. NixError if Nix's database cannot be read
        or a named path is not valid."""
        infos = await trio.to_thread.run_sync(
            partial(self._plan, paths, nix_store, closure=closure, every=every)
        )
        new = await self._new(infos, key)
        if on_plan is not None:
            on_plan(len(new), sum(i.nar_size for i in new))
        bulk = await self._publish(new, nix_store, key, root, on_batch)
        bulk.already = len(infos) - len(new)
        return bulk

    async def _new(self, infos: list[PathInfo], key: SecretKey | None) -> list[PathInfo]:
        """Those of `infos` this store does not hold published (with `key`'s claim)."""
        reader = self.store.reader

        def work() -> list[PathInfo]:
            return [i for i in infos if not already_published(reader.index, str(i.path), key)]

        return await self.store.read(work)

    def _db(self, nix_store: str | None) -> nixdb.NixDb:
        return nixdb.NixDb(nix_store or None, self.config.store_dir)

    def _plan(
        self, paths: Sequence[str], nix_store: str | None, *, closure: bool, every: bool
    ) -> list[PathInfo]:
        with self._db(nix_store) as db:
            return db.select(paths, closure=closure, every=every)

    async def _publish(
        self,
        infos: Sequence[PathInfo],
        nix_store: str | None,
        key: SecretKey | None,
        root: bool,
        on_batch: OnBatch | None,
    ) -> Bulk:
        def batch_done(batch: Bulk, total: Bulk) -> None:
            # On the writer's thread: hand the batch over, announce it from trio.
            trio.from_thread.run_sync(self._committed, batch)
            if on_batch is not None:
                on_batch(batch, total)

        async with self.store.write_lock:
            bulk = await self.store.write(
                partial(
                    publish_store_paths,
                    self.store.store,
                    infos,
                    nix_store or None,
                    key,
                    root=root,
                    on_batch=batch_done,
                )
            )
        for s in bulk.skipped:
            log.warning("not published: %s: %s", s.store_path, s.reason)
        return bulk

    def _committed(self, batch: Bulk) -> None:
        self.store.chunks_added()
        hashes = [m.store_path.hash_part for m, signed in batch.published if signed]
        if hashes:
            self.store.summaries.add(hashes)
        if self.store.on_published is not None:
            for m, signed in batch.published:
                if signed:
                    self.store.on_published(m)
        try:
            self._batches_send.send_nowait(batch)
        except trio.WouldBlock:
            # Announcing lags far behind: peers still find the paths by asking.
            log.info("announcing lags: %d paths not announced", len(batch.published))

    async def _announcer(self) -> None:
        async for batch in self._batches:
            signed = [c for _, claims in batch.published for c in claims]
            await self._announce(signed, [m.store_path for m, _ in batch.published])

    # --- the outbox

    async def _drain(self) -> None:
        while True:
            wake = self._wake = trio.Event()
            try:
                entries = await self._outbox(self.outbox.take, TAKE)
                if not entries:
                    await wake.wait()
                    continue
                failed = await self._publish_entries(entries)
            except Exception:
                # A full disk, an outbox that cannot be read, a bug: publishing stops for
                # a while, the node (serving, fetching) does not.
                log.exception("publishing queued paths failed; trying again in %.0f s", RETRY_AFTER)
                failed = True
            if failed:
                # Nix's database was unreadable (or the store is full): try again later
                # rather than spin; the entries stay in the outbox.
                with trio.move_on_after(RETRY_AFTER):
                    await wake.wait()

    async def _publish_entries(self, entries: list[Entry]) -> bool:
        """Publish what the entries name; False if it was done (or cannot ever be),
        True to retry later."""
        by_store: dict[str, list[Entry]] = {}
        for e in entries:
            by_store.setdefault(e.store, []).append(e)
        retry = False
        for store, group in by_store.items():
            nix_store = store or self.config.nix_store or None
            if self.key is None and not self._told_unsigned:
                self._told_unsigned = True
                log.warning(
                    "publishing queued paths unsigned (publish_key is not set): peers with a "
                    "trust policy will not accept them"
                )
            try:
                infos = await trio.to_thread.run_sync(self._entries_plan, group, nix_store)
                infos = await self._new(infos, self.key)
                if infos:
                    bulk = await self._publish(infos, nix_store, self.key, True, None)
                    log.info(
                        "published %d path%s (%s new bytes)%s",
                        len(bulk.published),
                        "" if len(bulk.published) == 1 else "s",
                        f"{bulk.new_bytes:,}",
                        f", {len(bulk.skipped)} skipped" if bulk.skipped else "",
                    )
            except NixError as e:
                log.warning("cannot publish %d queued paths yet: %s", len(group), e)
                retry = True
                continue
            await self._outbox(self.outbox.done, group)
        return retry

    def _entries_plan(self, entries: list[Entry], nix_store: str | None) -> list[PathInfo]:
        with self._db(nix_store) as db:
            paths: list[str] = []
            for e in entries:
                if e.derivation:
                    outputs = db.outputs(e.path)
                    if not outputs:
                        log.warning("%s: Nix knows no outputs of this derivation", e.path)
                    paths += outputs
                else:
                    paths.append(e.path)
            known = db.infos(paths)
            for p in paths:
                if p not in known:
                    # Collected by Nix before we came to it, or never built: nothing to do.
                    log.warning("%s is not a valid path in Nix's store: not published", p)
            return [r.info for r in db.closure(p for p in paths if p in known)]

    # --- watching Nix's store

    async def _watch(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        store = self.config.nix_store
        where = store or "the system Nix store"
        cursor = await self._outbox(self.outbox.cursor, store)
        db: nixdb.NixDb | None = None
        told = False
        try:
            while db is None:
                try:
                    db = await trio.to_thread.run_sync(self._db, store or None)
                except NixError as e:
                    if not told:
                        log.warning("watching %s: %s; looking again every second", where, e)
                        told = True
                        if cursor is None:
                            # Every path that appears once Nix makes its database is new.
                            cursor = 0
                            await self._outbox(self.outbox.advance, store, 0, [])
                        task_status.started()
                    await trio.sleep(WATCH_EVERY)
            if cursor is None:
                # First start: what is in the store already is `ferry publish --all`'s
                # to publish; from here on every new path is.
                cursor = await trio.to_thread.run_sync(db.last_id)
                await self._outbox(self.outbox.advance, store, cursor, [])
                log.info(
                    "watching %s: publishing every path Nix registers from now on "
                    "(`ferry publish --all` publishes those already there)",
                    where,
                )
            else:
                log.info("watching %s from where the node stopped (row %d)", where, cursor)
            if not told:
                task_status.started()
            while True:
                try:
                    rows = await trio.to_thread.run_sync(db.since, cursor, TAKE)
                    if rows:
                        # Derivations are how Nix builds, not what peers substitute.
                        new = [str(r.info.path) for r in rows]
                        new = [p for p in new if not p.endswith(".drv")]
                        await self._outbox(self.outbox.advance, store, rows[-1].id, new)
                        cursor = rows[-1].id
                        self.wake()
                        if len(rows) == TAKE:
                            continue  # more waiting: no pause
                except (NixError, OutboxError) as e:
                    log.warning("watching %s: %s", where, e)
                await trio.sleep(WATCH_EVERY)
        finally:
            if db is not None:
                db.close()


def summary(bulk: Bulk, key: SecretKey | None, data_dir: str) -> api.StorePublished:
    """What `ferry publish --closure/--all` reports, through a node or not."""
    return api.StorePublished(
        published=tuple(str(m.store_path) for m, _ in bulk.published),
        skipped=tuple(api.SkippedPath(s.store_path, s.reason) for s in bulk.skipped),
        already=bulk.already,
        nar_bytes=bulk.nar_bytes,
        new_chunks=bulk.new_chunks,
        new_bytes=bulk.new_bytes,
        signer=key.name if key else None,
        data_dir=data_dir,
    )
