"""`ferry export` (a store path's NAR) and `ferry materialize` (its tree on disk)."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from typing import Any

from node.cli import Commands, netcmd, options, storeopt, ui
from node.daemon import api
from node.local.errors import StoreError
from store import restore
from store.export import ExportError, write_nar
from store.path import StorePath, StorePathError


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "export",
        description="Reproduce the NAR of a store path from the local store, byte for byte "
        "what `nix-store --dump` gives. Every chunk is verified, and the NarHash at the end.",
    )
    p.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="a path in the local store (see `ferry store list`)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (created only if the NarHash checks out) instead of standard output",
    )
    options.add_data_dir(p)
    p.set_defaults(run=run_export)

    p = sub.add_parser(
        "materialize",
        description="Write the files of a store path (directories, files, executables, "
        "symlinks) to DIR, which must not exist yet. Chunks are verified as they are written; "
        "DIR appears only once the whole tree is there.",
    )
    p.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="a complete path in the local store",
    )
    p.add_argument("dest", metavar="DIR", help="where to write the tree (must not exist)")
    options.add_data_dir(p)
    p.set_defaults(run=run_materialize)


def parse_store_path(text: str) -> StorePath:
    try:
        return StorePath.parse(text)
    except StorePathError as e:
        ui.fail(str(e))


def run_export(args: argparse.Namespace) -> None:
    sp = parse_store_path(args.store_path)
    if args.output is None and sys.stdout.isatty():
        ui.fail("refusing to write a NAR to a terminal; redirect standard output or use -o FILE")
    if storeopt.node_running(args):
        _export_through_node(args, sp)
        return
    with storeopt.open_store(args) as store:
        try:
            manifest = store.complete_manifest(sp)
            pieces = write_nar(manifest, store, verify_chunks=True)
            with ui.progress(sp.name, manifest.nar_size) as advance:
                if args.output:
                    _to_file(args.output, pieces, advance)
                else:
                    out = sys.stdout.buffer
                    for piece in pieces:
                        out.write(piece)
                        advance(len(piece))
                    out.flush()
        except (StoreError, ExportError) as e:
            ui.fail(str(e))


def _export_through_node(args: argparse.Namespace, sp: StorePath) -> None:
    """The node reads the NAR (verified as it goes) and sends it in pieces; a file is
    renamed into place only once the node says the NarHash checked out."""
    tmp = f"{args.output}.tmp{os.getpid()}" if args.output else None
    try:
        with open(tmp, "wb") if tmp else nullcontext(sys.stdout.buffer) as out:

            def write(piece: api.NarPiece) -> None:
                out.write(piece.data)

            netcmd.request(args, api.ExportRequest(str(sp)), write)
            out.flush()
            if tmp:
                os.fsync(out.fileno())
        if tmp:
            os.replace(tmp, args.output)
    except OSError as e:
        ui.fail(f"{args.output or 'standard output'}: {e.strerror}")
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def _to_file(path: str, pieces: Any, advance: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for piece in pieces:  # the NarHash is checked when this loop ends
                f.write(piece)
                advance(len(piece))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        ui.fail(f"{path}: {e.strerror}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_materialize(args: argparse.Namespace) -> None:
    sp = parse_store_path(args.store_path)
    if storeopt.node_running(args):
        netcmd.request(args, api.MaterializeRequest(str(sp), os.path.abspath(args.dest)))
        return
    with storeopt.open_store(args) as store:
        try:
            manifest = store.complete_manifest(sp)
            with ui.progress(sp.name, manifest.stats().file_bytes) as advance:
                restore.restore(manifest, store, args.dest, on_progress=advance)
        except (StoreError, ExportError, restore.RestoreError) as e:
            ui.fail(str(e))
        except OSError as e:
            ui.fail(f"{e.filename or args.dest}: {e.strerror}")
