"""Where a manifest comes from: a directory tree, a NAR file (or standard input), or a
path in a Nix store. `ferry manifest` and `ferry publish` build one here, in the CLI's
process or in the node's; progress goes to a callback, so each draws it its own way."""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from store import build, dump, nar, nixcli
from store.build import ChunkSink
from store.manifest import Manifest
from store.path import DEFAULT_STORE_DIR, StorePath, StorePathError, check_store_dir

_READ = 1 << 20

# (what is being read, bytes read so far, bytes expected or None if unknown)
OnProgress = Callable[[str, int, int | None], None]


class SourceError(Exception):
    """A source that cannot be read as asked; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Source:
    """`path` (a tree or a store path) or `nar` (a file, '-' for standard input)."""

    path: str | None = None
    nar: str | None = None
    store_path: str | None = None  # the path to record (default: `nix-store --add`'s)
    references: tuple[str, ...] = ()
    name: str | None = None  # for the default store path
    store: str | None = None  # the Nix store holding `path`, as Nix's --store
    store_dir: str = DEFAULT_STORE_DIR

    def absolute(self) -> Source:
        """The same source with file names that mean the same from another directory."""

        def absolute(p: str | None) -> str | None:
            return os.path.abspath(p) if p and p != "-" else p

        store = self.store
        if store and os.path.exists(store):
            store = os.path.abspath(store)
        return dataclasses.replace(
            self, path=absolute(self.path), nar=absolute(self.nar), store=store
        )


def build_manifest(
    src: Source, on_chunk: ChunkSink | None = None, on_progress: OnProgress | None = None
) -> Manifest:
    """The manifest of `src`; each chunk goes to `on_chunk` as it is cut. Every way the
    source can be wrong is a SourceError."""
    try:
        return _build(src, on_chunk, on_progress or _quiet)
    except (
        StorePathError,
        nixcli.NixError,
        build.ModifiedStorePath,
        dump.DumpError,
    ) as e:
        raise SourceError(str(e)) from None
    except nar.NarError as e:
        raise SourceError(f"{src.nar}: {e}") from None
    except FileNotFoundError as e:
        raise SourceError(f"{e.filename}: no such file or directory") from None
    except PermissionError as e:
        raise SourceError(f"{e.filename}: permission denied") from None


def _quiet(what: str, done: int, total: int | None) -> None:
    pass


def _build(src: Source, on_chunk: ChunkSink | None, on_progress: OnProgress) -> Manifest:
    check_store_dir(src.store_dir)
    explicit = StorePath.decode(src.store_path, src.store_dir) if src.store_path else None
    refs = [StorePath.decode(r, src.store_dir) for r in src.references]
    if refs and not explicit:
        raise StorePathError(
            "--references needs --store-path: the default store path is for trees without references"
        )
    if src.nar is not None:
        name = src.name or _name_of(src.nar, ".nar")
        total = None if src.nar == "-" else os.path.getsize(src.nar)
        m = build.from_nar(
            _read(src.nar, _counter(name, total, on_progress)),
            explicit or _placeholder(src.store_dir, name),
            references=refs,
            on_chunk=on_chunk,
        )
        return m if explicit else with_source_path(m, name)
    path = src.path
    if path is None:
        raise SourceError("give a PATH or --nar FILE")
    if os.path.abspath(path).startswith(src.store_dir.rstrip("/") + "/") and not src.store_path:
        sp, rest = StorePath.split(os.path.abspath(path), src.store_dir)
        if rest:
            raise StorePathError(f"{path} is inside {sp}; give the store path itself")
        if refs:
            raise StorePathError(
                "--references is for trees outside a Nix store; Nix knows this path's references"
            )
        total = tree_size(nixcli.physical_path(sp, src.store))
        return build.from_store_path(
            sp,
            store=src.store,
            on_chunk=on_chunk,
            on_progress=_counter(sp.name, total, on_progress),
        )
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
    name = src.name or _name_of(path, "")
    m = build.from_directory(
        path,
        explicit or _placeholder(src.store_dir, name),
        references=refs,
        on_chunk=on_chunk,
        on_progress=_counter(name, tree_size(path), on_progress),
    )
    return m if explicit else with_source_path(m, name)


def _counter(what: str, total: int | None, on_progress: OnProgress) -> Callable[[int], None]:
    """`advance(n)` for the builders, reporting running totals."""
    done = 0
    on_progress(what, 0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        on_progress(what, done, total)

    return advance


def tree_size(path: str) -> int | None:
    """Bytes a progress report should expect for the tree at `path`; None if unknown."""
    try:
        return dump.tree_size(path)
    except OSError:
        return None  # the build itself reports the problem properly


def _name_of(path: str, suffix: str) -> str:
    base = os.path.basename(os.path.abspath(path)) if path != "-" else "stdin"
    if suffix and base.endswith(suffix):
        base = base[: -len(suffix)]
    return base


def _placeholder(store_dir: str, name: str) -> StorePath:
    # The real path depends on the NarHash, known only after the build.
    return StorePath(store_dir, "0" * 32, name)


def with_source_path(m: Manifest, name: str) -> Manifest:
    """`m` under the store path `nix-store --add` would give its tree."""
    sp = StorePath.for_source(name, m.nar_hash, store_dir=m.store_path.store_dir)
    return dataclasses.replace(m, store_path=sp)


def _read(path: str, advance: Callable[[int], None]) -> Iterator[bytes]:
    f = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 (closed below)
    with f:
        while data := f.read(_READ):
            advance(len(data))
            yield data
