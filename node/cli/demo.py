"""`ferry demo`: the main job on embedded defaults.

Until the network exists (issues 5 and 11) the demo shows the foundation end to end on
one machine: a real tree (the running Python's standard library) becomes a store path's
manifest and chunks, and the manifest plus the chunks give back the exact NAR that
`nix-store --dump` writes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from node.cli import manifest as manifest_cmd
from node.cli import source, ui
from store import build, dump, export, nar, nixcli
from store.path import DEFAULT_STORE_DIR, StorePath

# Parts of the stdlib left out to keep the demo quick; what remains is ~70 MB of real
# modules, C extensions and libpython's static archive.
_SKIP = {"site-packages", "test", "__pycache__", "idlelib", "tkinter", "lib2to3", "ensurepip"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="show ferry working on this machine with embedded defaults",
        description="Wrap this Python's standard library as a store path, build its manifest "
        "and chunks, reproduce its NAR from them and check it against `nix-store --dump`.",
    )
    p.add_argument("--tree", metavar="DIR", help="use DIR as the sample tree instead of the stdlib")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ferry-demo-") as tmp:
        if args.tree:
            tree = Path(args.tree)
            if not tree.exists():
                ui.fail(f"{tree}: no such file or directory")
        else:
            tree = Path(tmp) / "python3-stdlib"
            ui.err.print(f"staging a sample tree from {sysconfig.get_paths()['stdlib']} ...")
            shutil.copytree(sysconfig.get_paths()["stdlib"], tree, symlinks=True,
                            ignore=lambda d, names: [n for n in names if n in _SKIP])
        _demo(tree)


def _demo(tree: Path) -> None:
    chunks = export.MemoryChunks()
    name = tree.name
    t0 = time.perf_counter()
    with ui.progress("chunking", dump.tree_size(str(tree))) as advance:
        m = build.from_directory(str(tree), StorePath(DEFAULT_STORE_DIR, "0" * 32, name),
                                 on_chunk=chunks.add, on_progress=advance)
    m = source.with_source_path(m, name)
    built = time.perf_counter() - t0
    manifest_cmd.print_summary(manifest_cmd.summarize(m))

    # write_nar checks every chunk's BLAKE3 and, at the end, NarHash and NarSize.
    t0 = time.perf_counter()
    ours = b"".join(bytes(p) for p in export.write_nar(m, chunks))
    rebuilt = time.perf_counter() - t0
    events = sum(1 for _ in nar.parse([ours]))
    ui.out.print(f"\nmanifest built in {built:.2f} s ({m.nar_size / built / 1e6:,.0f} MB/s); "
                 f"NAR reproduced from {len(chunks.chunks):,} stored chunks in {rebuilt:.2f} s, "
                 f"NarHash verified, {events:,} NAR events parsed back")
    if not nixcli.is_available():
        ui.out.print("(install Nix to compare with `nix-store --dump`)")
        return
    theirs = subprocess.run(["nix-store", "--dump", str(tree)], capture_output=True, check=True).stdout
    if theirs != ours:
        ui.fail("ferry's NAR differs from `nix-store --dump` of the same tree; please report this")
    ui.out.print(f"nix-store --dump of the same tree: {len(theirs):,} bytes, [green]identical[/] to ferry's NAR")
