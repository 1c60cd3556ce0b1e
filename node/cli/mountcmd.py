"""`ferry mount`, `ferry umount`, `ferry mounts`: store paths mounted by the running node."""

from __future__ import annotations

import argparse
import os

from node.cli import Commands, options, ui
from node.cli.netcmd import data_dir, fail, fetch_with_progress, request
from node.daemon import api
from node.daemon.control import ControlError

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
        "realise",
        description="Make STORE_PATHs and their closures valid in the node's Nix store (the "
        "nix_store setting; the system's /nix/store by default) from the network, without "
        "Nix: the trust policy decides each path, as for `ferry fetch`; then each path Nix "
        "lacks is put at its own store path and registered with Nix (`nix-store "
        "--register-validity`) with the NarHash, NarSize, references and deriver the quorum "
        "signed, so unmodified Nix and every program see it at once. With --lazy (root, a "
        "kernel backend: see `ferry doctor`) each path is mounted there read-only and its file "
        "data fetched as programs read it; without, it is fetched whole and written there. "
        "A lazily realised path stays mounted when the node stops and is mounted again when "
        "it starts (after a reboot too). It is a GC root of Nix's while mounted, so "
        "`nix-store --gc` keeps it and `nix-store --delete` refuses it: `ferry umount "
        "STORE_PATH` unmounts it and deletes it through Nix (refused while a valid path "
        "refers to it).",
        epilog="exit status: 0 every path valid, 1 failed, 2 bad usage, 3 refused by the trust "
        "policy",
    )
    p.add_argument(
        "store_paths",
        metavar="STORE_PATH",
        nargs="+",
        type=options.store_path_arg,
        help="full store path, e.g. /nix/store/<hash>-hello-2.12",
    )
    p.add_argument(
        "--lazy",
        action="store_true",
        help="mount each path and fetch file data on first read (default: fetch it whole)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "fanotify", "cachefiles"),
        default="auto",
        help="how --lazy mounts (default: auto, fanotify where the kernel has it)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=_realise)

    p = sub.add_parser(
        "umount",
        description="Unmount DIR (fails while a program uses it). A materialized tree stays "
        "where it is; the node forgets it. A store path `ferry realise --lazy` mounted is "
        "unmounted and deleted through Nix (`nix-store --delete`), unless a valid path still "
        "refers to it.",
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


def _realise(args: argparse.Namespace) -> None:
    if args.backend != "auto" and not args.lazy:
        ui.fail("--backend chooses how --lazy mounts: add --lazy, or leave --backend out", 2)
    req = api.RealiseRequest(tuple(args.store_paths), args.lazy, args.backend)
    if args.json:
        got: api.Realised = request(args, req)
    else:
        try:
            got = fetch_with_progress(
                data_dir(args), req, "realising", "asking peers for the closure"
            )
        except ControlError as e:
            fail(e)
    if args.json:
        ui.print_json([api.encode(r) for r in got.paths])
        return
    ui.table(
        ("store path", "how", "file data present / total"),
        [
            (
                r.store_path,
                {"mounted": f"mounted ({r.backend})", "written": "written whole"}.get(
                    r.how, "valid already"
                ),
                "-" if r.bytes_total is None else f"{r.bytes_present or 0:,} / {r.bytes_total:,}",
            )
            for r in got.paths
        ],
    )


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
