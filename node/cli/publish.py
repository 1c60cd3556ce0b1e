"""`ferry publish`: add a store path to the local store (and sign it as a builder)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from node.cli import Commands, netcmd, options, source, storeopt, ui
from node.daemon import api, control
from node.daemon.autopublish import summary
from node.local.errors import StoreError
from node.local.publish import Bulk, already_published, publish, publish_store_paths
from node.local.store import LocalStore
from store import nixcli, nixdb
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
    p.add_argument(
        "--all",
        action="store_true",
        help="publish every valid path of the Nix store (--store), references first; "
        "give no PATH. Paths this store holds already are skipped, so it can be run again",
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
    if args.all or args.closure:
        _bulk(args, key)
        return
    src = source.from_args(args)
    if control.running(netcmd.data_dir(args)):
        result = _through_node(args, src)
        unpublished = result.pop("unpublished")
    else:
        with storeopt.open_store(args) as store:
            result = _direct(store, src, key, args)
            unpublished = _unpublished(store, result)
    signer = result.pop("signer", None)
    if args.json:
        ui.print_json(result)
    else:
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


def _bulk(args: argparse.Namespace, key: SecretKey | None) -> None:
    """--closure and --all: many Nix store paths, read from Nix's database."""
    if args.all:
        if args.path or args.nar or args.references:
            ui.fail("--all publishes every path of the Nix store: give no PATH", code=2)
        paths: list[str] = []
    else:
        paths = [str(_nix_store_path(source.from_args(args)))]
    store = args.store
    if store and os.path.exists(store):
        store = os.path.abspath(store)
    if control.running(netcmd.data_dir(args)):
        req = api.PublishStoreRequest(
            tuple(paths),
            store=store or "",
            closure=args.closure,
            every=args.all,
            key=os.path.abspath(args.key) if args.key else None,
            root=not args.no_root,
        )
        with ui.transfer_bar("publishing", "reading Nix's database") as update:

            def show(p: api.PublishProgress) -> None:
                update(p.bytes, p.bytes_done, f"{p.paths_done:,}/{p.paths:,} paths")

            done: api.StorePublished = netcmd.request(args, req, show)
    else:
        done = _bulk_direct(args, paths, store, key)
    if args.json:
        ui.print_json(api.encode(done))
        return
    ui.out.print(
        f"published {len(done.published):,} paths ({done.already:,} were here already): "
        f"{ui.megabytes(done.nar_bytes)} of NARs, {ui.megabytes(done.new_bytes)} new"
        + (f", signed by {done.signer}" if done.signer else ""),
        markup=False,
        soft_wrap=True,
    )
    for s in done.skipped:
        ui.err.print(f"warning: not published: {s.store_path}: {s.reason}", markup=False)


def _bulk_direct(
    args: argparse.Namespace, paths: list[str], store: str | None, key: SecretKey | None
) -> api.StorePublished:
    try:
        with nixdb.NixDb(store or None, args.store_dir) as db:
            infos = db.select(paths, closure=args.closure, every=args.all)
    except nixcli.NixError as e:
        ui.fail(str(e))
    with storeopt.open_store(args) as local:
        new = [i for i in infos if not already_published(local.index, str(i.path), key)]
        total_bytes = sum(i.nar_size for i in new)
        with ui.transfer_bar("publishing", "") as update:

            def show(batch: Bulk, total: Bulk) -> None:
                done = len(total.published) + len(total.skipped)
                update(total_bytes, total.nar_bytes, f"{done:,}/{len(new):,} paths")

            try:
                bulk = publish_store_paths(
                    local, new, store or None, key, root=not args.no_root, on_batch=show
                )
            except StoreError as e:
                ui.fail(str(e))
        bulk.already = len(infos) - len(new)
        return summary(bulk, key, local.data_dir)


def _nix_store_path(src: Source) -> StorePath:
    if src.nar is not None or src.path is None or src.store_path:
        ui.fail("--closure needs a Nix store path as PATH: its references come from Nix")
    try:
        sp, rest = StorePath.split(os.path.abspath(src.path), src.store_dir)
    except StorePathError as e:
        ui.fail(f"--closure needs a Nix store path as PATH: {e}")
    if rest:
        ui.fail(f"--closure needs a Nix store path as PATH: {src.path} is inside {sp}")
    return sp


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


def _unpublished(store: LocalStore, result: dict[str, Any]) -> list[str]:
    """References of what was published that this store does not hold."""
    refs = result.pop("references")
    return [r for r in refs if store.index.path(r) is None]


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
