"""`ferry store stats|list` and `ferry root add|remove|list`."""

from __future__ import annotations

import argparse
import dataclasses

from node.cli import Commands, netcmd, options, storeopt, ui
from node.cli.export import parse_store_path
from node.daemon import api
from node.daemon.storeops import listed
from node.local.errors import StoreError


def add_parser(sub: Commands) -> None:
    p = sub.add_parser("store", description="Inspect the local ferry store.")
    cmds = p.add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    c = cmds.add_parser(
        "stats",
        help="paths, bytes, and how much dedup saves",
        description="Paths stored, logical bytes, unique bytes on disk, and the dedup ratio.",
    )
    c.add_argument("--json", action="store_true", help="print as JSON")
    options.add_data_dir(c)
    c.set_defaults(run=run_stats)
    c = cmds.add_parser("list", help="the stored paths", description="List the stored paths.")
    c.add_argument("--json", action="store_true", help="print as JSON")
    options.add_data_dir(c)
    c.set_defaults(run=run_list)

    p = sub.add_parser(
        "root",
        description="Manage GC roots: `ferry gc` keeps these paths and everything they refer to.",
    )
    cmds = p.add_subparsers(dest="root_command", metavar="COMMAND", required=True)
    for name, helptext in (("add", "protect paths from GC"), ("remove", "stop protecting paths")):
        c = cmds.add_parser(
            name, help=helptext, description=helptext[0].upper() + helptext[1:] + "."
        )
        c.add_argument(
            "store_paths",
            metavar="STORE_PATH",
            type=options.store_path_arg,
            nargs="+",
            help="paths in the local store",
        )
        options.add_data_dir(c)
        c.set_defaults(run=run_root, root_action=name)
    c = cmds.add_parser("list", help="list the roots", description="List the GC roots.")
    options.add_data_dir(c)
    c.set_defaults(run=run_root, root_action="list")


def run_stats(args: argparse.Namespace) -> None:
    if storeopt.node_running(args):
        r: api.StoreStatsReply = netcmd.request(args, api.StoreStatsRequest())
        fields = api.encode(r)
    else:
        with storeopt.open_store(args) as store:
            fields = {"data_dir": store.data_dir, **dataclasses.asdict(store.stats())}
    fields["unique_bytes"] = fields["unique_bytes"] or 0
    s = argparse.Namespace(**fields)
    dedup = s.chunk_bytes / s.unique_bytes if s.unique_bytes else 1.0
    if args.json:
        ui.print_json({**fields, "dedup_ratio": round(dedup, 4)})
        return
    rows = [
        ("store", s.data_dir),
        ("paths", f"{s.paths:,} ({s.complete_paths:,} complete, {s.roots:,} roots)"),
        ("NAR bytes", f"{s.nar_bytes:,} (what the paths' NARs would take)"),
        ("chunk bytes", f"{s.chunk_bytes:,} (file data, path by path)"),
        ("unique", f"{s.unique_bytes:,} in {s.unique_chunks:,} chunks"),
        ("on disk", f"{s.slab_disk_bytes:,} in slabs + {s.index_bytes:,} index"),
        ("dedup", f"{dedup:.2f}x"),
    ]
    for k, v in rows:
        ui.out.print(f"{k:<12} {v}", markup=False, soft_wrap=True)


def run_list(args: argparse.Namespace) -> None:
    if storeopt.node_running(args):
        listing: api.StoreListing = netcmd.request(args, api.StoreListRequest())
        rows = list(listing.paths)
    else:
        with storeopt.open_store(args) as store:
            rows = listed(store.index)
    if args.json:
        ui.print_json([api.encode(p) for p in rows])
        return
    for p in rows:
        flags = ("root" if p.root else "") + (
            f" missing {p.missing_chunks} chunks" if p.missing_chunks else ""
        )
        ui.out.print(
            f"{p.store_path}  {p.nar_size:,}  {flags.strip()}".rstrip(),
            markup=False,
            soft_wrap=True,
        )


def run_root(args: argparse.Namespace) -> None:
    paths = [str(parse_store_path(t)) for t in getattr(args, "store_paths", ())]
    if storeopt.node_running(args):
        r: api.Roots = netcmd.request(args, api.RootsRequest(args.root_action, tuple(paths)))
        roots, not_roots = list(r.roots), list(r.not_roots)
    else:
        with storeopt.open_store(args) as store:
            not_roots = []
            for sp in paths:
                if args.root_action == "add":
                    try:
                        store.add_root(sp)
                    except StoreError as e:
                        ui.fail(str(e))
                elif args.root_action == "remove" and not store.remove_root(sp):
                    not_roots.append(sp)
            roots = store.index.roots()
    if args.root_action == "list":
        for root in roots:
            ui.out.print(root, markup=False, soft_wrap=True)
    if not_roots:
        ui.fail(f"{not_roots[0]} is not a GC root")
