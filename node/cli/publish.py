"""`ferry publish`: add a store path to the local store (and sign it as a builder)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from node.cli import Commands, netcmd, options, source, storeopt, ui
from node.daemon import api, control
from node.local.errors import StoreError
from node.local.publish import publish
from node.local.store import LocalStore
from store import nixcli
from store.path import StorePath, StorePathError
from store.source import Source, SourceError
from trust import keyfile
from trust.key import SecretKey
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
    p.add_argument(
        "--closure",
        action="store_true",
        help="also publish every path PATH (a Nix store path) refers to, directly or not, "
        "references first",
    )
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
    src = source.from_args(args)
    sources = _closure(src) if args.closure else [src]
    through_node = control.running(netcmd.data_dir(args))
    unpublished: list[str] = []
    if through_node:
        results = [_through_node(args, s) for s in sources]
    else:
        with storeopt.open_store(args) as store:
            results = [_direct(store, s, key, args) for s in sources]
            unpublished = _unpublished(store, results)
    signers = [r.pop("signer", None) for r in results]
    if args.json:
        ui.print_json(results if args.closure else results[0])
    else:
        for result, signer in zip(results, signers, strict=True):
            _show(result, signer)
    if unpublished:
        ui.err.print(
            f"warning: {len(unpublished)} of its references are not in this ferry store, so "
            "a peer cannot fetch its closure from here: "
            + ", ".join(unpublished[:5])
            + (" ..." if len(unpublished) > 5 else "")
            + " (publish them too, or publish with --closure)",
            markup=False,
            soft_wrap=True,
        )


def _closure(src: Source) -> list[Source]:
    """One source per path of `src`'s closure, references first."""
    if src.nar is not None or src.path is None or src.store_path:
        ui.fail("--closure needs a Nix store path as PATH: its references come from Nix")
    try:
        sp, rest = StorePath.split(os.path.abspath(src.path), src.store_dir)
    except StorePathError as e:
        ui.fail(f"--closure needs a Nix store path as PATH: {e}")
    if rest:
        ui.fail(f"--closure needs a Nix store path as PATH: {src.path} is inside {sp}")
    try:
        return [dataclasses.replace(src, path=str(p)) for p in nixcli.closure(sp, src.store)]
    except nixcli.NixError as e:
        ui.fail(str(e))


def _direct(
    store: LocalStore, src: Source, key: SecretKey | None, args: argparse.Namespace
) -> dict[str, Any]:
    try:
        with ui.progress_report() as report:
            pub = publish(store, src, key, root=not args.no_root, on_progress=report)
    except (SourceError, StoreError) as e:
        ui.fail(str(e))
    manifest, signed = pub.manifest, pub.signed
    s = manifest.stats()
    return {
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
        "references": [str(r) for r in manifest.references if r != manifest.store_path],
        "signer": key.name if key else None,
    }


def _unpublished(store: LocalStore, results: list[dict[str, Any]]) -> list[str]:
    """References of what was published that this store does not hold."""
    published = {r["store_path"] for r in results}
    reader = store.reader()
    try:
        return sorted(
            {
                ref
                for r in results
                for ref in r.pop("references")
                if ref not in published and reader.path_state(ref) is None
            }
        )
    finally:
        reader.close()


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


def _through_node(args: argparse.Namespace, src: Source) -> dict[str, Any]:
    """The node holds the store: it ingests the path and announces it to its peers."""
    if args.nar == "-":
        ui.fail(
            "a running node cannot read your standard input: save the NAR to a file and pass --nar FILE"
        )
    req = api.PublishRequest(
        src.absolute(),
        key=os.path.abspath(args.key) if args.key else None,
        root=not args.no_root,
    )
    published: api.Published = netcmd.request(args, req)
    return api.encode(published)
