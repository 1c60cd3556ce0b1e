"""`ferry manifest PATH|--nar FILE`: build a manifest and summarise it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from node.cli import ui
from store import build, dump, nar, nixcli, userfile
from store.manifest import Manifest
from store.path import DEFAULT_STORE_DIR, StorePath, StorePathError, check_store_dir
from store.userfile import UserFileError

_READ = 1 << 20


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "manifest",
        help="build a store path's manifest and print a summary",
        description="Build the ferry manifest of a directory, a NAR file, or a path in a Nix "
        "store, and print a summary: entries, bytes, chunks, unique chunks and the NarHash "
        "in Nix's sha256: form. A path inside the store directory is read as a Nix store path "
        "(references and deriver asked from Nix, NarHash checked against Nix's).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("path", nargs="?", help="a directory (or file) tree, or a store path")
    src.add_argument("--nar", metavar="FILE", help="read a NAR file instead ('-' for standard input)")
    p.add_argument("--store-path", metavar="PATH",
                   help="the store path to record (default: the path `nix-store --add` would give)")
    p.add_argument("--name", help="name for the default store path (default: the file or directory name)")
    p.add_argument("--store", metavar="STORE",
                   help="Nix store holding PATH, as Nix's --store (a chroot directory or local?root=DIR)")
    p.add_argument("--store-dir", default=DEFAULT_STORE_DIR, help="the store directory (default: %(default)s)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the manifest's bytes to FILE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    try:
        check_store_dir(args.store_dir)
        manifest = _build(args)
    except (StorePathError, nixcli.NixError, build.NarHashMismatch, dump.DumpError) as e:
        ui.fail(str(e))
    except nar.NarError as e:
        ui.fail(f"{args.nar}: {e}")
    except FileNotFoundError as e:
        ui.fail(f"{e.filename}: no such file or directory")
    except PermissionError as e:
        ui.fail(f"{e.filename}: permission denied")
    if args.output:
        try:
            userfile.write_atomically(args.output, manifest.encode())
        except UserFileError as e:
            ui.fail(str(e))
    summary = summarize(manifest)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(summary)


def _build(args: argparse.Namespace) -> Manifest:
    explicit = StorePath.decode(args.store_path, args.store_dir) if args.store_path else None
    if args.nar is not None:
        name = args.name or _name_of(args.nar, ".nar")
        total = None if args.nar == "-" else os.path.getsize(args.nar)
        with ui.progress("reading NAR", total) as advance:
            m = build.from_nar(_read(args.nar, advance), explicit or _placeholder(args.store_dir, name))
        return m if explicit else with_source_path(m, name)
    path = args.path
    if os.path.abspath(path).startswith(args.store_dir.rstrip("/") + "/") and not args.store_path:
        sp, rest = StorePath.split(os.path.abspath(path), args.store_dir)
        if rest:
            raise StorePathError(f"{path} is inside {sp}; give the store path itself")
        with ui.progress(sp.name, ui.tree_size(nixcli.physical_path(sp, args.store))) as advance:
            return build.from_store_path(sp, store=args.store, on_progress=advance)
    name = args.name or _name_of(path, "")
    with ui.progress(name, ui.tree_size(path)) as advance:
        m = build.from_directory(path, explicit or _placeholder(args.store_dir, name), on_progress=advance)
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
    f = sys.stdin.buffer if path == "-" else open(path, "rb")
    with f:
        while data := f.read(_READ):
            advance(len(data))
            yield data


def summarize(m: Manifest) -> dict[str, Any]:
    s = m.stats()
    data = m.encode()
    return {
        "store_path": str(m.store_path),
        "nar_hash": str(m.nar_hash),
        "nar_size": m.nar_size,
        "manifest_digest": m.digest().hex(),
        "manifest_size": len(data),
        "references": [str(r) for r in m.references],
        "deriver": str(m.deriver) if m.deriver else None,
        **dataclasses.asdict(s),
    }


def print_summary(s: dict[str, Any]) -> None:
    rows = [
        ("store path", s["store_path"]),
        ("NarHash", s["nar_hash"]),
        ("NarSize", f"{s['nar_size']:,} bytes"),
        ("manifest", f"{s['manifest_digest']} ({s['manifest_size']:,} bytes)"),
        ("entries", f"{s['entries']:,} ({s['files']:,} files, {s['directories']:,} directories, "
                    f"{s['symlinks']:,} symlinks)"),
        ("file bytes", f"{s['file_bytes']:,} ({s['inline_bytes']:,} inline in the manifest)"),
        ("chunks", f"{s['chunks']:,} ({s['unique_chunks']:,} unique, {s['unique_chunk_bytes']:,} bytes)"),
        ("references", ", ".join(s["references"]) or "none"),
    ]
    if s["deriver"]:
        rows.append(("deriver", s["deriver"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        ui.out.print(f"{k:<{width}}  {v}", soft_wrap=True)
