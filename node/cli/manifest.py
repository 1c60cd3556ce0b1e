"""`ferry manifest PATH|--nar FILE`: build a manifest and summarise it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from node.cli import Commands, source, ui
from store import userfile
from store.manifest import Manifest
from store.userfile import UserFileError


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "manifest",
        description="Build the ferry manifest of a directory, a NAR file, or a path in a Nix "
        "store, and print a summary: entries, bytes, chunks, unique chunks and the NarHash "
        "in Nix's sha256: form. A path inside the store directory is read as a Nix store path "
        "(references and deriver asked from Nix, NarHash checked against Nix's).",
    )
    source.add_arguments(p)
    p.add_argument("-o", "--output", metavar="FILE", help="also write the manifest's bytes to FILE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    manifest = source.build(source.from_args(args))
    if args.output:
        try:
            userfile.write_atomically(args.output, manifest.encode())
        except UserFileError as e:
            ui.fail(str(e))
    summary = summarize(manifest)
    if args.json:
        ui.print_json(summary)
    else:
        print_summary(summary)


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
        (
            "entries",
            f"{s['entries']:,} ({s['files']:,} files, {s['directories']:,} directories, "
            f"{s['symlinks']:,} symlinks)",
        ),
        ("file bytes", f"{s['file_bytes']:,} ({s['inline_bytes']:,} inline in the manifest)"),
        (
            "chunks",
            f"{s['chunks']:,} ({s['unique_chunks']:,} unique, {s['unique_chunk_bytes']:,} bytes)",
        ),
        ("references", ", ".join(s["references"]) or "none"),
    ]
    if s["deriver"]:
        rows.append(("deriver", s["deriver"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        ui.out.print(f"{k:<{width}}  {v}", soft_wrap=True)
