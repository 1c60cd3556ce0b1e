"""`ferry store stats|list` and `ferry root add|remove|list`."""

from __future__ import annotations

import argparse
import dataclasses

from node.cli import Commands, options, storeopt, ui
from node.cli.export import parse_store_path


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
    with storeopt.open_store(args) as store:
        s = store.stats()
        where = store.data_dir
    if args.json:
        ui.print_json(
            {"data_dir": where, **dataclasses.asdict(s), "dedup_ratio": round(s.dedup_ratio, 4)}
        )
        return
    rows = [
        ("store", where),
        ("paths", f"{s.paths:,} ({s.complete_paths:,} complete, {s.roots:,} roots)"),
        ("NAR bytes", f"{s.nar_bytes:,} (what the paths' NARs would take)"),
        ("chunk bytes", f"{s.chunk_bytes:,} (file data, path by path)"),
        ("unique", f"{s.unique_bytes:,} in {s.unique_chunks:,} chunks"),
        ("on disk", f"{s.slab_disk_bytes:,} in slabs + {s.index_bytes:,} index"),
        ("dedup", f"{s.dedup_ratio:.2f}x"),
    ]
    for k, v in rows:
        ui.out.print(f"{k:<12} {v}", markup=False, soft_wrap=True)


def run_list(args: argparse.Namespace) -> None:
    with storeopt.open_store(args) as store:
        roots = set(store.index.roots())
        rows = [(p, store.index.missing_chunks(p.store_path)) for p in store.index.paths()]
    if args.json:
        ui.print_json(
            [
                {
                    "store_path": p.store_path,
                    "nar_hash": p.nar_hash,
                    "nar_size": p.nar_size,
                    "manifest_digest": p.manifest_digest.hex(),
                    "root": p.store_path in roots,
                    "missing_chunks": missing,
                }
                for p, missing in rows
            ]
        )
        return
    for p, missing in rows:
        flags = ("root" if p.store_path in roots else "") + (
            f" missing {missing} chunks" if missing else ""
        )
        ui.out.print(
            f"{p.store_path}  {p.nar_size:,}  {flags.strip()}".rstrip(),
            markup=False,
            soft_wrap=True,
        )


def run_root(args: argparse.Namespace) -> None:
    with storeopt.open_store(args) as store:
        if args.root_action == "list":
            for r in store.index.roots():
                ui.out.print(r, markup=False, soft_wrap=True)
            return
        for text in args.store_paths:
            sp = parse_store_path(text)
            if args.root_action == "add":
                store.add_root(sp)
            elif not store.remove_root(sp):
                ui.fail(f"{sp} is not a GC root")
