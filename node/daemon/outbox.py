"""The outbox: Nix store paths waiting to be published, kept on disk
(`<data-dir>/outbox.sqlite`) so that none is lost when the node stops or crashes.

Two writers fill it: Nix's post-build hook (`ferry post-build-hook`, which writes here
itself, so a build never waits for the node, and a stopped node misses nothing) and the
node's store watcher, which keeps here, in the same transaction as the paths it found,
the last row of Nix's database it has read. The node takes entries out in order and
deletes them once their paths are published.

Only the standard library is imported: the hook runs after every build."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable

FILE = "outbox.sqlite"
# The control request that tells a running node to look at its outbox now.
WAKE_OP = "outbox"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,        -- the Nix store, as Nix's --store ('' for the node's own)
    path TEXT NOT NULL,         -- a store path, or a derivation whose outputs are meant
    derivation INTEGER NOT NULL,
    added REAL NOT NULL,
    UNIQUE (store, path, derivation)
);
CREATE TABLE IF NOT EXISTS cursors (
    store TEXT PRIMARY KEY,     -- a watched Nix store
    last_id INTEGER NOT NULL    -- the last row of its ValidPaths the watcher has queued
);
"""


class OutboxError(Exception):
    """The outbox cannot be read or written; the message says where and why."""


class Entry:
    """One queued path (a plain class: dataclasses cost the hook a fifth of its start)."""

    __slots__ = ("derivation", "id", "path", "store")

    def __init__(self, id: int, store: str, path: str, derivation: bool) -> None:
        self.id, self.store, self.path, self.derivation = id, store, path, derivation


class Outbox:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, FILE)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise OutboxError(f"{self.path}: {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as e:
            raise OutboxError(f"{self.path}: {e}") from None

    def add(self, store: str, paths: Iterable[str], *, derivation: bool = False) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._write(
                "INSERT OR IGNORE INTO entries (store, path, derivation, added) VALUES (?, ?, ?, ?)",
                ((store, p, int(derivation), now) for p in paths),
            )

    def take(self, limit: int) -> list[Entry]:
        """The oldest entries (they stay until `done`)."""
        rows = self._db.execute(
            "SELECT id, store, path, derivation FROM entries ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [Entry(i, s, p, bool(d)) for i, s, p, d in rows]

    def done(self, entries: Iterable[Entry]) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._write("DELETE FROM entries WHERE id = ?", ((e.id,) for e in entries))

    def waiting(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def cursor(self, store: str) -> int | None:
        row = self._db.execute("SELECT last_id FROM cursors WHERE store = ?", (store,)).fetchone()
        return None if row is None else int(row[0])

    def advance(self, store: str, last_id: int, paths: Iterable[str]) -> None:
        """Queue `paths` and move the store's cursor to `last_id`, atomically: a crash
        between the two would lose paths or queue them twice."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._write(
                "INSERT OR IGNORE INTO entries (store, path, derivation, added) VALUES (?, ?, 0, ?)",
                ((store, p, now) for p in paths),
            )
            self._write(
                "INSERT INTO cursors VALUES (?, ?) ON CONFLICT (store) DO UPDATE SET last_id = ?",
                [(store, last_id, last_id)],
            )
