"""`ferry image` (a stored path as an EROFS metadata image) and `ferry inspect`."""

from __future__ import annotations

import argparse
import stat

from erofs.layout import LAYOUT_CHUNK_BASED, ImageError
from erofs.reader import Image
from node.cli import Commands, netcmd, options, storeopt, ui
from node.cli.export import parse_store_path
from node.daemon import api
from node.local.errors import StoreError
from node.local.image import PathImage, image_of, mount_options
from store import userfile
from store.userfile import UserFileError

MAX_IMAGE = 1 << 32


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "image",
        description="Write an EROFS image of a stored path whose file data stays in the store's slab files: "
        "each chunk index points at the chunk in its slab, so images share one copy of every chunk. "
        "Prints the slab list the kernel needs as device= mount options, in order. Mount it with "
        "mount(2) and those options (util-linux mount puts a loop device under the image, which EROFS "
        "then cannot pair with its devices); `ferry mount` does this for you.",
    )
    p.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="a path in the local store",
    )
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the image file to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=run_image)

    p = sub.add_parser(
        "inspect",
        description="Check an EROFS image with ferry's reader and list it: superblock, device table, "
        "and every path with its mode, size and where its data is. Exit 1 if the image is malformed.",
    )
    p.add_argument("image", metavar="IMAGE", help="an EROFS image file (from `ferry image`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_inspect)


def run_image(args: argparse.Namespace) -> None:
    sp = parse_store_path(args.store_path)
    img: PathImage | api.Image
    if storeopt.node_running(args):
        img = netcmd.request(args, api.ImageRequest(str(sp)))
    else:
        with storeopt.open_store(args) as store:
            try:
                img = image_of(store, sp)
            except StoreError as e:
                ui.fail(str(e))
    try:
        userfile.write_atomically(args.output, img.data, "the image file")
    except UserFileError as e:
        ui.fail(str(e))
    if args.json:
        ui.print_json(
            {
                "image": args.output,
                "bytes": len(img.data),
                "inodes": img.inodes,
                "devices": list(img.devices),
                "mount_options": mount_options(img.devices),
                "absent_chunks": img.absent_chunks,
            }
        )
        return
    ui.out.print(
        f"wrote {args.output}: {len(img.data):,} bytes, {img.inodes:,} inodes", markup=False
    )
    ui.out.print(
        f"mount options (mount(2), read-only): {mount_options(img.devices)}",
        soft_wrap=True,
        markup=False,
    )
    if img.absent_chunks:
        ui.out.print(
            f"note: {img.absent_chunks} chunks are not in the store yet; without an ondemand "
            "backend they read as zeros",
            markup=False,
        )


def run_inspect(args: argparse.Namespace) -> None:
    try:
        data = userfile.read(args.image, MAX_IMAGE, "an EROFS image")
    except UserFileError as e:
        ui.fail(str(e))
    try:
        img = Image(data)
        rows = []
        for w in img.walk():
            ino = w.inode
            where = ""
            if ino.kind == "file" and ino.layout == LAYOUT_CHUNK_BASED:
                refs = img.chunks(ino)
                devs = sorted({r.device_id for r in refs})
                where = f"{len(refs)} chunks of {img.chunk_size(ino)} on device {','.join(map(str, devs))}"
            elif ino.kind == "symlink":
                where = "-> " + img.read(ino).decode("utf-8", "replace")
            rows.append(
                {
                    "path": "/" + w.path.decode("utf-8", "replace"),
                    "nid": ino.nid,
                    "mode": stat.filemode(ino.mode),
                    "size": ino.size,
                    "nlink": ino.nlink,
                    "data": where,
                }
            )
    except ImageError as e:
        ui.fail(f"{args.image}: not a usable EROFS image: {e}")
    sb = img.sb
    devices = [d.tag.rstrip(b"\0").decode("utf-8", "replace") for d in img.devices]
    if args.json:
        ui.print_json(
            {
                "inodes": sb.inos,
                "blocks": sb.blocks,
                "root_nid": sb.root_nid,
                "meta_blkaddr": sb.meta_blkaddr,
                "devices": devices,
                "entries": rows,
            }
        )
        return
    ui.out.print(
        f"{args.image}: {sb.inos:,} inodes, {sb.blocks:,} blocks of 4 KiB, root nid {sb.root_nid}, "
        f"{len(devices)} device{'' if len(devices) == 1 else 's'}: {', '.join(devices) or 'none'}",
        soft_wrap=True,
        markup=False,
    )
    ui.table(
        ("mode", "size", "nid", "path", "data"),
        [
            (str(r["mode"]), f"{r['size']:,}", str(r["nid"]), str(r["path"]), str(r["data"]))
            for r in rows
        ],
    )
