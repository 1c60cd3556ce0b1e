"""`ferry verify`: check every chunk and path in the store, and repair what can be."""

from __future__ import annotations

import argparse
import sys

from node.cli import Commands, options, storeopt, ui


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "verify",
        description="Read every stored chunk and check its BLAKE3 digest, and check each path's "
        "manifest and that its chunks are all there. Reports every problem without stopping; "
        "exit status 1 if there were any. With --repair, corrupt chunks are dropped so that "
        "publishing or fetching the path again restores them.",
    )
    p.add_argument(
        "--repair", action="store_true", help="drop corrupt chunks (they become missing)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    with storeopt.open_store(args) as store:
        total = store.index.scalar("SELECT sum(length) FROM chunks WHERE present = 1")
        with ui.progress("verifying", total) as advance:
            r = store.verify(repair=args.repair, on_progress=advance)
    if args.json:
        ui.print_json(
            {
                "ok": r.ok,
                "chunks": r.chunks,
                "bytes": r.bytes,
                "repaired": r.repaired,
                "corrupt": [{"digest": d.hex(), "problem": p} for d, p in r.corrupt],
                "bad_paths": [{"store_path": s, "problem": p} for s, p in r.bad_paths],
            }
        )
    else:
        for d, problem in r.corrupt:
            ui.out.print(f"corrupt chunk {d.hex()}: {problem}", markup=False)
        for sp, problem in r.bad_paths:
            ui.out.print(f"bad path {sp}: {problem}", markup=False, soft_wrap=True)
        ui.out.print(
            f"checked {r.chunks:,} chunks ({ui.megabytes(r.bytes)}): "
            + (
                "all good"
                if r.ok
                else f"{len(r.corrupt)} corrupt chunks, {len(r.bad_paths)} bad paths"
                + ("; corrupt chunks dropped" if r.repaired else "; run `ferry verify --repair`")
            ),
            markup=False,
        )
    sys.exit(0 if r.ok else 1)
