"""`ferry verify`: check every chunk and path in the store, and repair what can be."""

from __future__ import annotations

import argparse
import sys

from node.cli import Commands, netcmd, options, storeopt, ui
from node.daemon import api
from node.daemon.storeops import verified


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
    if storeopt.node_running(args):
        with ui.transfer_bar("verifying", "") as update:

            def show(p: api.VerifyProgress) -> None:
                update(p.bytes, p.bytes_done, "")

            r: api.Verified = netcmd.request(args, api.VerifyRequest(args.repair), show)
    else:
        with storeopt.open_store(args) as store:
            total = store.index.scalar("SELECT sum(length) FROM chunks WHERE present = 1")
            with ui.progress("verifying", total) as advance:
                report = store.verify(repair=args.repair, on_progress=advance)
        r = verified(report)
    if args.json:
        ui.print_json(api.encode(r))
    else:
        for c in r.corrupt:
            ui.out.print(f"corrupt chunk {c.digest}: {c.problem}", markup=False)
        for b in r.bad_paths:
            ui.out.print(f"bad path {b.store_path}: {b.problem}", markup=False, soft_wrap=True)
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
