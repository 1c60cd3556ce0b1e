"""`ferry publish`: add a store path to the local store (and sign it as a builder)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from node.cli import Commands, netcmd, options, source, storeopt, ui
from node.daemon import api, control
from node.local.errors import StoreError
from node.local.publish import publish
from store.source import SourceError
from trust import keyfile
from trust.keyfile import KeyFileError


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "publish",
        description="Build the manifest of a directory, a NAR, or a path in a Nix store, and "
        "store the chunks the store does not have yet. A path inside the store directory is "
        "read from Nix (references, deriver and NarHash asked from Nix; the NarHash is checked "
        "against ferry's). With --key, also sign a build claim as that builder. Published "
        "paths are GC roots unless --no-root is given.",
    )
    source.add_arguments(p, references=True)
    p.add_argument("--key", metavar="SECRET", help="sign a build claim with this builder key")
    p.add_argument("--no-root", action="store_true", help="do not protect the path from `ferry gc`")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    try:
        key = keyfile.load_secret(args.key) if args.key else None
    except KeyFileError as e:
        ui.fail(str(e))
    if control.running(netcmd.data_dir(args)):
        _through_node(args)
        return
    with storeopt.open_store(args) as store:
        try:
            with ui.progress_report() as report:
                pub = publish(
                    store, source.from_args(args), key, root=not args.no_root, on_progress=report
                )
        except (SourceError, StoreError) as e:
            ui.fail(str(e))
    manifest, signed = pub.manifest, pub.signed
    s = manifest.stats()
    result = {
        "store_path": str(manifest.store_path),
        "nar_hash": str(manifest.nar_hash),
        "nar_size": manifest.nar_size,
        "manifest_digest": manifest.digest().hex(),
        "chunks": s.chunks,
        "unique_chunks": s.unique_chunks,
        "new_chunks": pub.new_chunks,
        "new_bytes": pub.new_bytes,
        "root": not args.no_root,
        "claim": signed[0].nix_sig().encode() if signed else None,
        "data_dir": store.data_dir,
    }
    if args.json:
        ui.print_json(result)
        return
    _show(result, key.name if key else None)


def _show(result: dict[str, Any], signer: str | None) -> None:
    unique_chunks = result["unique_chunks"]
    had = unique_chunks - result["new_chunks"]
    ui.out.print(
        f"published {result['store_path']}\n"
        f"  NarHash  {result['nar_hash']}  ({result['nar_size']:,} bytes)\n"
        f"  chunks   {unique_chunks:,} unique: {result['new_chunks']:,} new ({result['new_bytes']:,} bytes), "
        f"{had:,} already stored",
        soft_wrap=True,
        markup=False,
    )
    if signer:
        ui.out.print(f"  claim    signed by {signer}", markup=False)


def _through_node(args: argparse.Namespace) -> None:
    """The node holds the store: it ingests the path and announces it to its peers."""
    if args.nar == "-":
        ui.fail(
            "a running node cannot read your standard input: save the NAR to a file and pass --nar FILE"
        )
    req = api.PublishRequest(
        source.from_args(args).absolute(),
        key=os.path.abspath(args.key) if args.key else None,
        root=not args.no_root,
    )
    published: api.Published = netcmd.request(args, req)
    result = api.encode(published)
    del result["signer"]
    if args.json:
        ui.print_json(result)
        return
    _show(result, published.signer)
