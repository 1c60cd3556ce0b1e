"""Where a manifest comes from, for `ferry manifest` and `ferry publish`: a directory
tree, a NAR file (or standard input), or a path in a Nix store."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from node.cli import ui
from store import build, dump, nar, nixcli
from store.build import ChunkSink
from store.manifest import Manifest
from store.path import DEFAULT_STORE_DIR, StorePath, StorePathError, check_store_dir

_READ = 1 << 20


def add_arguments(p: argparse.ArgumentParser, *, references: bool = False) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "path", nargs="?", metavar="PATH", help="a directory (or file) tree, or a Nix store path"
    )
    src.add_argument(
        "--nar", metavar="FILE", help="read a NAR file instead ('-' for standard input)"
    )
    p.add_argument(
        "--store-path",
        metavar="STORE_PATH",
        help="the store path to record (default: the path `nix-store --add` would give)",
    )
    if references:
        p.add_argument(
            "--references",
            metavar="P",
            nargs="*",
            default=[],
            help="full store paths the tree refers to (with --store-path)",
        )
    p.add_argument(
        "--name", help="name for the default store path (default: the file or directory name)"
    )
    p.add_argument(
        "--store",
        metavar="STORE",
        help="Nix store holding PATH, as Nix's --store (a chroot directory or local?root=DIR)",
    )
    p.add_argument(
        "--store-dir", default=DEFAULT_STORE_DIR, help="the store directory (default: %(default)s)"
    )


def user_error(e: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a way a source can be wrong, or None for a bug."""
    if isinstance(e, (StorePathError, nixcli.NixError, build.NarHashMismatch, dump.DumpError)):
        return str(e)
    if isinstance(e, nar.NarError):
        return f"{args.nar}: {e}"
    if isinstance(e, FileNotFoundError):
        return f"{e.filename}: no such file or directory"
    if isinstance(e, PermissionError):
        return f"{e.filename}: permission denied"
    return None


@contextmanager
def user_errors(args: argparse.Namespace) -> Iterator[None]:
    """Turns the ways a source can be wrong into one-line errors (exit 1)."""
    try:
        yield
    except (
        StorePathError,
        nixcli.NixError,
        build.NarHashMismatch,
        dump.DumpError,
        nar.NarError,
        FileNotFoundError,
        PermissionError,
    ) as e:
        ui.fail(user_error(e, args) or str(e))


def build_manifest(args: argparse.Namespace, on_chunk: ChunkSink | None = None) -> Manifest:
    check_store_dir(args.store_dir)
    explicit = StorePath.decode(args.store_path, args.store_dir) if args.store_path else None
    refs = [StorePath.decode(r, args.store_dir) for r in getattr(args, "references", [])]
    if refs and not explicit:
        raise StorePathError(
            "--references needs --store-path: the default store path is for trees without references"
        )
    if args.nar is not None:
        name = args.name or _name_of(args.nar, ".nar")
        total = None if args.nar == "-" else os.path.getsize(args.nar)
        with ui.progress("reading NAR", total) as advance:
            m = build.from_nar(
                _read(args.nar, advance),
                explicit or _placeholder(args.store_dir, name),
                references=refs,
                on_chunk=on_chunk,
            )
        return m if explicit else with_source_path(m, name)
    path = args.path
    if os.path.abspath(path).startswith(args.store_dir.rstrip("/") + "/") and not args.store_path:
        sp, rest = StorePath.split(os.path.abspath(path), args.store_dir)
        if rest:
            raise StorePathError(f"{path} is inside {sp}; give the store path itself")
        if refs:
            raise StorePathError(
                "--references is for trees outside a Nix store; Nix knows this path's references"
            )
        with ui.progress(sp.name, ui.tree_size(nixcli.physical_path(sp, args.store))) as advance:
            return build.from_store_path(
                sp, store=args.store, on_chunk=on_chunk, on_progress=advance
            )
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
    name = args.name or _name_of(path, "")
    with ui.progress(name, ui.tree_size(path)) as advance:
        m = build.from_directory(
            path,
            explicit or _placeholder(args.store_dir, name),
            references=refs,
            on_chunk=on_chunk,
            on_progress=advance,
        )
    return m if explicit else with_source_path(m, name)


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


def _read(path: str, advance: Any) -> Iterator[bytes]:
    f = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 (closed below)
    with f:
        while data := f.read(_READ):
            advance(len(data))
            yield data
