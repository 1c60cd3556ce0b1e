"""Reading a local Nix store's database (`<root>/nix/var/nix/db/db.sqlite`), read-only.

What a builder publishes is what Nix registered: a row in ValidPaths is committed only
once the path is complete on disk, with its references in the same transaction, so a
path read here is never one Nix is still writing. Rows get increasing ids, which makes
"what is new since I last looked" one query. The schema (version 10) has been the same
since Nix 2.0; anything else is refused with a message rather than misread.

Asking the database costs microseconds where `nix path-info` costs tens of
milliseconds a call: publishing a store of thousands of paths would spend most of its
time starting Nix."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from store.hash import Hash, HashError
from store.nixcli import NixError, PathInfo, store_root
from store.path import DEFAULT_STORE_DIR, StorePath, StorePathError

SCHEMA = "10"
# SQLite's limit on host parameters in one statement is 32766; stay far below it.
_BATCH = 500


@dataclass(frozen=True, slots=True)
class Registered:
    """A valid path and the row id Nix gave it (ids only grow)."""

    id: int
    info: PathInfo


def references_first(refs: Mapping[str, Sequence[str]]) -> list[str]:
    """The keys of `refs` (path -> the paths it refers to), each after those of its
    references that are keys; references outside `refs` are ignored."""
    order: list[str] = []
    placed: set[str] = set()
    # Depth first, references before referrers; iterative (closures can be deep).
    for root in sorted(refs):
        if root in placed:
            continue
        placed.add(root)
        stack = [(root, iter(sorted(refs[root])))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in placed and child in refs:
                    placed.add(child)
                    stack.append((child, iter(sorted(refs[child]))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


class NixDb:
    """One read-only connection to a store's database; NixError if it cannot be read."""

    def __init__(self, store: str | None = None, store_dir: str = DEFAULT_STORE_DIR) -> None:
        self.store = store
        self.store_dir = store_dir
        state = os.path.join(store_root(store) or "/", "nix/var/nix/db")
        self.path = os.path.join(state, "db.sqlite")
        where = f"the Nix store at {store}" if store else "the Nix store"
        try:
            with open(os.path.join(state, "schema")) as f:
                schema = f.read().strip()
        except FileNotFoundError:
            raise NixError(
                f"{state}: no Nix database here; is {where} a local store Nix has used?"
            ) from None
        except PermissionError:
            raise NixError(
                f"{state}: permission denied (run ferry as root or as Nix's owner)"
            ) from None
        if schema != SCHEMA:
            raise NixError(
                f"{self.path}: Nix database schema {schema}, ferry reads schema {SCHEMA} (Nix 2.x)"
            )
        try:
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30
            )
            self._db.execute("select 1 from ValidPaths limit 1").fetchall()
        except sqlite3.Error as e:
            raise NixError(f"{self.path}: cannot read Nix's database: {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> NixDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise NixError(f"{self.path}: reading Nix's database failed: {e}") from None

    def last_id(self) -> int:
        (row,) = self._query("select coalesce(max(id), 0) from ValidPaths")
        return int(row[0])  # type: ignore[call-overload]

    def since(self, after: int, limit: int = 1000) -> list[Registered]:
        """Paths registered after row `after`, oldest first, at most `limit`."""
        rows = self._query(
            "select id, path, hash, narSize, deriver from ValidPaths "
            "where id > ? order by id limit ?",
            (after, limit),
        )
        return self._registered(rows)

    def infos(self, paths: Iterable[str]) -> dict[str, Registered]:
        """The valid ones among `paths` (missing ones are absent from the answer)."""
        wanted = list(dict.fromkeys(paths))
        rows: list[tuple[object, ...]] = []
        for i in range(0, len(wanted), _BATCH):
            part = wanted[i : i + _BATCH]
            rows += self._query(
                "select id, path, hash, narSize, deriver from ValidPaths where path in "
                f"({','.join('?' * len(part))})",
                part,
            )
        return {str(r.info.path): r for r in self._registered(rows)}

    def outputs(self, drv: str) -> list[str]:
        """The output paths a derivation (a valid .drv path) names; [] if Nix lacks it."""
        rows = self._query(
            "select o.path from DerivationOutputs o join ValidPaths v on o.drv = v.id "
            "where v.path = ? order by o.id",
            (drv,),
        )
        return [str(r[0]) for r in rows]

    def closure(self, paths: Iterable[str]) -> list[Registered]:
        """The valid `paths` and everything they refer to, each after its references
        (publishing in this order never leaves a reference behind its referrer)."""
        found = self.infos(paths)
        refs: dict[str, tuple[str, ...]] = {}
        todo = list(found)
        while todo:
            infos = {p: found[p] for p in todo}
            todo = []
            for p, r in infos.items():
                refs[p] = tuple(str(x) for x in r.info.references if str(x) != p)
            new = {x for p in infos for x in refs[p] if x not in found}
            if new:
                more = self.infos(sorted(new))
                found.update(more)
                todo = list(more)
        return [found[p] for p in references_first(refs)]

    def every_path(self) -> list[str]:
        paths: list[str] = []
        after = 0
        while rows := self.since(after, 10_000):
            paths += (str(r.info.path) for r in rows)
            after = rows[-1].id
        return paths

    def select(self, paths: Sequence[str], *, closure: bool, every: bool) -> list[PathInfo]:
        """What publishing `paths` means: them (with their closures with `closure`, or
        every valid path but derivations with `every`), references first. NixError names a path Nix
        does not hold."""
        if every:
            # Derivations are how Nix builds, not what peers substitute.
            outputs = [p for p in self.every_path() if not p.endswith(".drv")]
            return [r.info for r in self.closure(outputs)]
        known = self.infos(paths)
        for p in paths:
            if p not in known:
                where = f"the Nix store at {self.store}" if self.store else "the Nix store"
                raise NixError(
                    f"{p} is not a valid path in {where}: Nix has not built or substituted it"
                )
        if closure:
            return [r.info for r in self.closure(paths)]
        return [known[p].info for p in dict.fromkeys(paths)]

    def _registered(self, rows: list[tuple[object, ...]]) -> list[Registered]:
        if not rows:
            return []
        ids = [int(r[0]) for r in rows]  # type: ignore[call-overload]
        refs: dict[int, list[str]] = {i: [] for i in ids}
        for i in range(0, len(ids), _BATCH):
            part = ids[i : i + _BATCH]
            for referrer, path in self._query(
                "select r.referrer, v.path from Refs r join ValidPaths v on r.reference = v.id "
                f"where r.referrer in ({','.join('?' * len(part))})",
                part,
            ):
                refs[int(referrer)].append(str(path))  # type: ignore[call-overload]
        out = []
        for id_, path, hash_, size, deriver in rows:
            try:
                sp = StorePath.decode(str(path), self.store_dir)
                info = PathInfo(
                    path=sp,
                    nar_hash=Hash.decode(str(hash_)),
                    nar_size=int(size or 0),  # type: ignore[call-overload]
                    references=tuple(
                        StorePath.decode(r, self.store_dir)
                        for r in sorted(refs[int(id_)])  # type: ignore[call-overload]
                    ),
                    deriver=StorePath.decode(str(deriver), self.store_dir) if deriver else None,
                )
            except (StorePathError, HashError, ValueError) as e:
                raise NixError(f"{self.path}: unexpected row for {path}: {e}") from None
            out.append(Registered(int(id_), info))  # type: ignore[call-overload]
        return out
