"""The store's index, in SQLite (WAL): where every chunk lives and what is stored.

Invariants the rest of the store relies on:
- a chunk row with `present = 1` points at bytes that were written and synced to its
  slab before the row was committed;
- every chunk row lies below its slab's committed `size`, so anything past it in the
  file is debris from a crash and may be cut off;
- a path row exists only once all its chunks are present (complete) — until lazy
  fetching, which adds paths whose chunks are allocated holes (`present = 0`);
- `freed` lists extents whose rows are gone but whose holes may not be punched yet.
Writes are batched: one transaction per ingest batch, never one per chunk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from node.local.errors import StoreError, StoreVersionError

SCHEMA_VERSION = 1
_IN_BATCH = 500  # digests per `IN (...)` query (SQLite allows 999 parameters)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE slabs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,          -- allocated so far (committed watermark)
    cap INTEGER NOT NULL            -- logical size at which the next slab starts
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,    -- BLAKE3-256 of the raw bytes
    slab INTEGER NOT NULL REFERENCES slabs,
    offset INTEGER NOT NULL,        -- 4 KiB aligned
    length INTEGER NOT NULL,
    present INTEGER NOT NULL        -- 1: bytes on disk and synced; 0: a hole
);
CREATE TABLE manifests (
    id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,    -- BLAKE3 of the manifest's bytes
    data BLOB NOT NULL
);
CREATE TABLE manifest_chunks (
    manifest INTEGER NOT NULL REFERENCES manifests ON DELETE CASCADE,
    chunk INTEGER NOT NULL REFERENCES chunks,
    PRIMARY KEY (manifest, chunk)
) WITHOUT ROWID;
CREATE INDEX manifest_chunks_by_chunk ON manifest_chunks (chunk);
CREATE TABLE paths (
    id INTEGER PRIMARY KEY,
    store_path TEXT NOT NULL UNIQUE,
    manifest INTEGER NOT NULL REFERENCES manifests,
    nar_hash TEXT NOT NULL,
    nar_size INTEGER NOT NULL,
    deriver TEXT,
    added INTEGER NOT NULL          -- seconds since the epoch
);
CREATE TABLE path_refs (
    path INTEGER NOT NULL REFERENCES paths ON DELETE CASCADE,
    ref TEXT NOT NULL,
    PRIMARY KEY (path, ref)
) WITHOUT ROWID;
CREATE TABLE claims (
    id INTEGER PRIMARY KEY,
    store_path TEXT NOT NULL,
    builder TEXT NOT NULL,          -- public key, name:base64
    data BLOB NOT NULL UNIQUE       -- the signed claim as sent
);
CREATE INDEX claims_by_path ON claims (store_path);
CREATE TABLE roots (store_path TEXT PRIMARY KEY);
CREATE TABLE freed (
    slab INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (slab, offset)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class ChunkRow:
    id: int
    digest: bytes
    slab: int
    offset: int
    length: int
    present: bool


@dataclass(frozen=True, slots=True)
class SlabRow:
    id: int
    name: str
    size: int
    cap: int


@dataclass(frozen=True, slots=True)
class PathRow:
    id: int
    store_path: str
    manifest_digest: bytes
    nar_hash: str
    nar_size: int
    deriver: str | None
    added: int


# Store paths by name under /nix/store (45: the name's first character, 1-based), for
# `store_paths_named`. An index, not a schema change: older stores gain it when opened.
_NAME_INDEX = "CREATE INDEX IF NOT EXISTS paths_by_name ON paths (substr(store_path, 45))"


class Index:
    def __init__(self, path: str) -> None:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so a
        # batch is exactly one transaction and nothing commits behind our back.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk when it returns, so "done" survives a power cut.
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._depth = 0  # transactions open: an inner one is part of the outer
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            # One script, one transaction: a crash leaves no half-made schema.
            self.db.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO meta VALUES ('schema', '{SCHEMA_VERSION}'); COMMIT;"
            )
            self.db.execute(_NAME_INDEX)
            return
        row = (
            self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if "meta" in tables
            else None
        )
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise StoreVersionError(
                f"index schema {row[0] if row else 'unknown'} is not {SCHEMA_VERSION}: "
                "this store was made by another version of ferry"
            )
        self.db.execute(_NAME_INDEX)  # stores made before it get it here

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; opened inside another, it is part of that one (a batch of
        writes that each take a transaction commits once)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        self.db.execute("COMMIT")

    # --- slabs

    def slabs(self) -> list[SlabRow]:
        return [
            SlabRow(*r)
            for r in self.db.execute("SELECT id, name, size, cap FROM slabs ORDER BY id")
        ]

    def add_slab(self, name: str, cap: int) -> int:
        cur = self.db.execute("INSERT INTO slabs (name, size, cap) VALUES (?, 0, ?)", (name, cap))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_slab_size(self, slab: int, size: int) -> None:
        self.db.execute("UPDATE slabs SET size = ? WHERE id = ?", (size, slab))

    # --- chunks

    def add_chunks(self, rows: Iterable[tuple[bytes, int, int, int]], present: bool = True) -> None:
        """(digest, slab, offset, length) of chunks whose bytes are synced (or, with
        present=False, of holes reserved for chunks still to come)."""
        self.db.executemany(
            f"INSERT INTO chunks (digest, slab, offset, length, present) VALUES (?, ?, ?, ?, {int(present)})",
            rows,
        )

    def set_present(self, ids: Iterable[int], present: bool) -> None:
        self.db.executemany(
            "UPDATE chunks SET present = ? WHERE id = ?", ((int(present), i) for i in ids)
        )

    def chunks(self, digests: list[bytes]) -> dict[bytes, ChunkRow]:
        """The rows of those of `digests` the index knows, in a few queries, not one each."""
        out: dict[bytes, ChunkRow] = {}
        for i in range(0, len(digests), _IN_BATCH):
            part = digests[i : i + _IN_BATCH]
            for r in self.db.execute(
                "SELECT id, digest, slab, offset, length, present FROM chunks "
                f"WHERE digest IN ({','.join('?' * len(part))})",
                part,
            ):
                out[r[1]] = ChunkRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]))
        return out

    def all_chunks(self, present_only: bool = True) -> Iterator[ChunkRow]:
        where = "WHERE present = 1" if present_only else ""
        for r in self.db.execute(
            f"SELECT id, digest, slab, offset, length, present FROM chunks {where} ORDER BY slab, offset"
        ):
            yield ChunkRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]))

    # --- manifests and paths

    def manifest(self, digest: bytes) -> bytes | None:
        r = self.db.execute("SELECT data FROM manifests WHERE digest = ?", (digest,)).fetchone()
        return r[0] if r else None

    def add_manifest(self, digest: bytes, data: bytes, chunk_digests: Iterable[bytes]) -> int:
        """Inside a transaction: the manifest's row, linked to its chunks (which must all
        be in the index; StoreError otherwise)."""
        r = self.db.execute("SELECT id FROM manifests WHERE digest = ?", (digest,)).fetchone()
        if r:
            return r[0]
        cur = self.db.execute("INSERT INTO manifests (digest, data) VALUES (?, ?)", (digest, data))
        mid = cur.lastrowid
        assert mid is not None
        # Set-based: one join instead of a lookup per chunk.
        self.db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS wanted (digest BLOB PRIMARY KEY) WITHOUT ROWID"
        )
        self.db.execute("DELETE FROM wanted")
        self.db.executemany(
            "INSERT OR IGNORE INTO wanted VALUES (?)", ((d,) for d in chunk_digests)
        )
        linked = self.db.execute(
            "INSERT INTO manifest_chunks SELECT ?, c.id FROM wanted w JOIN chunks c ON c.digest = w.digest",
            (mid,),
        ).rowcount
        wanted = self.db.execute("SELECT count(*) FROM wanted").fetchone()[0]
        if linked != wanted:
            raise StoreError(
                f"{wanted - linked} chunks of manifest {digest.hex()} are not in the store"
            )
        return mid

    def path(self, store_path: str) -> PathRow | None:
        r = self.db.execute(
            "SELECT p.id, p.store_path, m.digest, p.nar_hash, p.nar_size, p.deriver, p.added "
            "FROM paths p JOIN manifests m ON m.id = p.manifest WHERE p.store_path = ?",
            (store_path,),
        ).fetchone()
        return PathRow(*r) if r else None

    def paths(self) -> list[PathRow]:
        return [
            PathRow(*r)
            for r in self.db.execute(
                "SELECT p.id, p.store_path, m.digest, p.nar_hash, p.nar_size, p.deriver, p.added "
                "FROM paths p JOIN manifests m ON m.id = p.manifest ORDER BY p.store_path"
            )
        ]

    def store_paths_named(self, store_dir: str, prefix: str) -> list[str]:
        """Recorded store paths whose name (after `<store_dir>/<hash>-`) starts with
        `prefix`. A range on the names' index for /nix/store (a closure asks this for
        each of its paths; a scan each was quadratic); a scan for other store dirs."""
        first = len(store_dir) + 35  # 1-based: past the slash, 32 hash characters, the dash
        # Names are ASCII below DEL: every name starting with `prefix` sorts in the range.
        return [
            r[0]
            for r in self.db.execute(
                f"SELECT store_path FROM paths WHERE substr(store_path, {first:d}) >= ? "
                f"AND substr(store_path, {first:d}) < ?",
                (prefix, prefix + "\x7f"),
            )
            if r[0].startswith(store_dir + "/")
        ]

    def put_path(
        self,
        store_path: str,
        manifest: int,
        nar_hash: str,
        nar_size: int,
        deriver: str | None,
        refs: Iterable[str],
        added: int,
    ) -> None:
        self.db.execute("DELETE FROM paths WHERE store_path = ?", (store_path,))
        cur = self.db.execute(
            "INSERT INTO paths (store_path, manifest, nar_hash, nar_size, deriver, added) VALUES (?, ?, ?, ?, ?, ?)",
            (store_path, manifest, nar_hash, nar_size, deriver, added),
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO path_refs VALUES (?, ?)", ((cur.lastrowid, r) for r in refs)
        )

    def refs(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for sp, ref in self.db.execute(
            "SELECT p.store_path, r.ref FROM path_refs r JOIN paths p ON p.id = r.path"
        ):
            out.setdefault(sp, []).append(ref)
        return out

    def missing_chunks(self, store_path: str) -> int:
        """How many of the path's chunks are not present (0: the path is complete)."""
        return self.db.execute(
            "SELECT count(*) FROM paths p JOIN manifest_chunks mc ON mc.manifest = p.manifest "
            "JOIN chunks c ON c.id = mc.chunk WHERE p.store_path = ? AND c.present = 0",
            (store_path,),
        ).fetchone()[0]

    # --- claims and roots

    def add_claim(self, store_path: str, builder: str, data: bytes) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO claims (store_path, builder, data) VALUES (?, ?, ?)",
            (store_path, builder, data),
        )

    def claims(self, store_path: str) -> list[bytes]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT data FROM claims WHERE store_path = ? ORDER BY id", (store_path,)
            )
        ]

    def claimed_paths(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT store_path FROM claims")]

    def claims_by_hashes(self, path_hashes: Sequence[str]) -> dict[str, list[bytes]]:
        """`claims_by_hash` of many at once: one pass over the claims, not one a hash."""
        wanted = set(path_hashes)
        out: dict[str, list[bytes]] = {}
        for sp, data in self.db.execute("SELECT store_path, data FROM claims ORDER BY id"):
            h = sp.rpartition("/")[2][:32]
            if h in wanted:
                out.setdefault(h, []).append(data)
        return out

    def claims_by_hash(self, path_hash: str) -> list[bytes]:
        # The hash is nix32 (no glob metacharacters); the store directory may be any.
        return [
            r[0]
            for r in self.db.execute(
                "SELECT data FROM claims WHERE store_path GLOB ? ORDER BY id", (f"*/{path_hash}-*",)
            )
        ]

    def roots(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT store_path FROM roots ORDER BY store_path")]

    def add_root(self, store_path: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO roots VALUES (?)", (store_path,))

    def remove_root(self, store_path: str) -> bool:
        return self.db.execute("DELETE FROM roots WHERE store_path = ?", (store_path,)).rowcount > 0

    # --- freeing space

    def freed(self) -> list[tuple[int, int, int]]:
        return list(self.db.execute("SELECT slab, offset, length FROM freed ORDER BY slab, offset"))

    def forget_freed(self, extents: Iterable[tuple[int, int]]) -> None:
        self.db.executemany("DELETE FROM freed WHERE slab = ? AND offset = ?", extents)

    def scalar(self, sql: str, *args: object) -> int:
        return self.db.execute(sql, args).fetchone()[0] or 0
