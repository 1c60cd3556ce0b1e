"""The logbook: which builder's log each claim is in, as shown by a logged claim this node
checked (trust.logged), kept in `<data-dir>/logbook.sqlite`.

A policy with `require_logs`, or one that pins a key to one log, counts a claim only with
such evidence (trust.policy). The evidence comes from every logged claim the node checks:
its own keys', gossip's, a builder's push, and answers to INCLUDED (p2p.logwire), which a
fetch asks of the peers that hold a path's claims when the evidence is missing. The
logged claims themselves are kept too, so that this node can answer INCLUDED for a
builder that is offline.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping

from trust.logged import LoggedClaim
from trust.revocation import claim_digest

log = logging.getLogger(__name__)

FILE = "logbook.sqlite"
MAX_SERVED = 8  # logged forms of one claim in one answer: a key keeps a log per machine

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logged (
    claim BLOB NOT NULL,        -- trust.revocation.claim_digest of the claim
    log BLOB NOT NULL,          -- the log's id (trust.treehead)
    data BLOB NOT NULL,         -- the logged claim as it travels
    UNIQUE (claim, log)         -- (a rowid table: rows of a KiB fit its pages better)
);
"""


class LogbookError(OSError):
    """The logbook cannot be read or written; the message says where and why."""


class Logbook:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, FILE)
        os.makedirs(data_dir, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # Evidence lost to a power cut is asked for again: no need to wait on the disk.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute("SELECT claim, log FROM logged").fetchall()
        except sqlite3.Error as e:
            raise LogbookError(
                f"{self.path}: {e} (move it away: the evidence is asked again)"
            ) from None
        self._logs: dict[bytes, frozenset[bytes]] = {}
        for claim, log_id in rows:
            self._logs[claim] = self._logs.get(claim, frozenset()) | {log_id}

    def close(self) -> None:
        self._db.close()

    @property
    def logs(self) -> Mapping[bytes, frozenset[bytes]]:
        """Claim digest -> the ids of the logs it was shown to be in (live)."""
        return self._logs

    def add(self, logged: Iterable[LoggedClaim]) -> int:
        """Keep checked logged claims; how many were news."""
        rows = []
        for x in logged:
            digest, log_id = claim_digest(x.claim.claim), x.head.head.log
            if log_id not in self._logs.get(digest, frozenset()):
                self._logs[digest] = self._logs.get(digest, frozenset()) | {log_id}
                rows.append((digest, log_id, x.encode()))
        if rows:
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT OR IGNORE INTO logged (claim, log, data) VALUES (?, ?, ?)", rows
                    )
            except sqlite3.Error as e:
                # Still counted in memory; kept again when peers show it after a restart.
                # A full disk must not fail the publish or the fetch that brought it.
                log.warning("cannot keep evidence of claims' logs in %s: %s", self.path, e)
        return len(rows)

    def logged(self, digest: bytes) -> list[bytes]:
        """The logged forms kept of a claim (at most MAX_SERVED)."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT data FROM logged WHERE claim = ? LIMIT ?", (digest, MAX_SERVED)
            )
        ]
