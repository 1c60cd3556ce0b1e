"""The source options of `ferry manifest` and `ferry publish`, and building a manifest
from them with a progress bar (the building itself is store.source)."""

from __future__ import annotations

import argparse
import os

from node.cli import options, ui
from store.build import ChunkSink
from store.manifest import Manifest
from store.path import DEFAULT_STORE_DIR
from store.source import Source, SourceError, build_manifest


def add_arguments(p: argparse.ArgumentParser, *, references: bool = False) -> None:
    # With --references (which takes any number of paths), PATH may end up among them:
    # `from_args` takes it back, and says when neither PATH nor --nar was given.
    src = p.add_mutually_exclusive_group(required=not references)
    src.add_argument(
        "path", nargs="?", metavar="PATH", help="a directory (or file) tree, or a Nix store path"
    )
    src.add_argument(
        "--nar", metavar="FILE", help="read a NAR file instead ('-' for standard input)"
    )
    p.add_argument(
        "--store-path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
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


def from_args(args: argparse.Namespace) -> Source:
    references = list(getattr(args, "references", ()))
    path = args.path
    if path is None and args.nar is None:
        # `--references A B DIR`: argparse gave DIR to --references. The references are
        # full store paths; what is not one is the PATH.
        others = [r for r in references if not _store_path_like(r, args.store_dir)]
        if len(others) != 1:
            ui.fail("one of the arguments PATH --nar is required", code=2)
        path = others[0]
        references.remove(path)
    return Source(
        path=path,
        nar=args.nar,
        store_path=args.store_path,
        references=tuple(references),
        name=args.name,
        store=args.store,
        store_dir=args.store_dir,
    )


def build(src: Source, on_chunk: ChunkSink | None = None) -> Manifest:
    """build_manifest with a progress bar; a bad source ends the command with its message."""
    try:
        with ui.progress_report() as report:
            return build_manifest(src, on_chunk=on_chunk, on_progress=report)
    except SourceError as e:
        ui.fail(str(e))


def _store_path_like(text: str, store_dir: str) -> bool:
    return os.path.dirname(text.rstrip("/")) == store_dir.rstrip("/")
