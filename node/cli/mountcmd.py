"""`ferry mount`, `ferry umount`, `ferry mounts`: store paths mounted by the running node."""

from __future__ import annotations

import argparse
import os

from node.cli import Commands, options, ui
from node.cli.netcmd import request
from node.daemon import api

BACKENDS = ("auto", "fanotify", "cachefiles", "materialize")


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "mount",
        description="Ask the running node to mount STORE_PATH on DIR. With the fanotify backend (root, Linux "
        "6.14+ with file-backed EROFS) the whole tree appears at once and only the bytes programs read are "
        "fetched from peers, chunk by chunk; a chunk no peer can supply makes the read fail with EIO, never "
        "return zeros. cachefiles does the same on kernels with CONFIG_CACHEFILES_ONDEMAND (5.19 to 7.1; "
        "not yet tried on a real one). With materialize (any kernel, no root) the path is fetched whole and written to DIR, "
        "which must be empty or absent. auto picks fanotify, else cachefiles, else materialize (see "
        "`ferry doctor`). The trust "
        "policy decides first, as for `ferry fetch`.",
        epilog="exit status: 0 mounted, 1 failed, 2 bad usage, 3 refused by the trust policy",
    )
    p.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="full store path, e.g. /nix/store/<hash>-hello-2.12",
    )
    p.add_argument(
        "dir", metavar="DIR", help="the mount point (an empty directory; materialize creates it)"
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="how (default: auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=_mount)

    p = sub.add_parser(
        "umount",
        description="Unmount DIR (fails while a program uses it). A materialized tree stays "
        "where it is; the node forgets it.",
    )
    p.add_argument("dir", metavar="DIR", help="a directory `ferry mounts` lists")
    options.add_data_dir(p)
    p.set_defaults(run=_umount)

    p = sub.add_parser(
        "mounts",
        description="Each mount: directory, store path, backend, and bytes present of the total.",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=_mounts)


def _mount(args: argparse.Namespace) -> None:
    got: api.MountRow = request(
        args, api.MountRequest(args.store_path, os.path.abspath(args.dir), args.backend)
    )
    if args.json:
        ui.print_json(api.encode(got))
    else:
        ui.out.print(f"{got.store_path} on {got.dir} ({got.backend})", markup=False)


def _umount(args: argparse.Namespace) -> None:
    request(args, api.UmountRequest(os.path.abspath(args.dir)))


def _mounts(args: argparse.Namespace) -> None:
    table: api.MountTable = request(args, api.MountsRequest())
    if args.json:
        ui.print_json([api.encode(r) for r in table.mounts])
        return
    ui.table(
        ("dir", "store path", "backend", "present / total"),
        [
            (
                r.dir,
                r.store_path,
                r.backend,
                "-" if r.bytes_total is None else f"{r.bytes_present or 0:,} / {r.bytes_total:,}",
            )
            for r in table.mounts
        ],
    )
