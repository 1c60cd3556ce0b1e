"""`ferry gc`: drop what no root needs and free its chunks."""

from __future__ import annotations

import argparse

from node.cli import Commands, netcmd, options, storeopt, ui
from node.daemon import api
from node.local.store import GcReport


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "gc",
        description="Remove store paths not reachable from the GC roots (through references), "
        "then free every chunk no remaining path uses by punching holes in the slabs. Paths "
        "you published are roots; see `ferry root`.",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be freed, change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=run_gc)


def run_gc(args: argparse.Namespace) -> None:
    r: GcReport | api.GcDone
    if storeopt.node_running(args):
        # The node collects a batch at a time: its fetches and the gateway go on.
        r = netcmd.request(args, api.GcRequest(args.dry_run))
    else:
        with storeopt.open_store(args) as store:
            r = store.gc(dry_run=args.dry_run)
    if args.json:
        ui.print_json(
            {
                "removed_paths": list(r.removed_paths),
                "freed_chunks": r.freed_chunks,
                "freed_bytes": r.freed_bytes,
                "dry_run": r.dry_run,
            }
        )
        return
    verb = "would remove" if r.dry_run else "removed"
    for p in r.removed_paths:
        ui.out.print(f"{verb} {p}", markup=False, soft_wrap=True)
    ui.out.print(
        f"{verb} {len(r.removed_paths):,} paths; "
        f"{'would free' if r.dry_run else 'freed'} {r.freed_chunks:,} chunks ({ui.megabytes(r.freed_bytes)})",
        markup=False,
    )
