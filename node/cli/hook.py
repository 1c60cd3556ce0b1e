"""`ferry post-build-hook`: Nix's post-build hook. It queues the build's outputs in the
node's outbox and returns: the node publishes them (references first, signed with its
`publish_key`) while Nix goes on. A build never waits for publishing, and never fails
because of ferry: a node that is stopped finds the paths in its outbox when it starts.

Nix 2.8 runs the hook with an empty OUT_PATHS; the outputs are then those of DRV_PATH,
which the node reads from Nix's database once the build has registered them.

Nix runs the hook without arguments, so `ferry init` writes <data-dir>/post-build-hook,
a script that calls this command with the data directory; nix.conf names that script.
The work is node/daemon/posthook.py's, which the script runs without the CLI around it."""

from __future__ import annotations

import argparse
import os
import sys

from node.cli import Commands, options
from node.local.datadir import default_data_dir

SCRIPT = "post-build-hook"


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "post-build-hook",
        description="Nix's post-build hook: queue the build's outputs (OUT_PATHS, or the outputs of "
        "DRV_PATH when OUT_PATHS is empty, as in Nix 2.8) for the node to publish, and return at once. "
        "Set `post-build-hook = <data-dir>/post-build-hook` in nix.conf (`ferry init` writes that "
        "script). Problems are reported on standard error and never fail the build.",
    )
    p.add_argument(
        "--store",
        metavar="STORE",
        default="",
        help="the Nix store the outputs are in, as Nix's --store (default: the node's nix_store)",
    )
    options.add_data_dir(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from node.daemon import posthook

    data_dir = os.path.abspath(args.data_dir or default_data_dir())
    store = os.path.abspath(args.store) if args.store and os.path.isdir(args.store) else args.store
    posthook.report(data_dir, store, os.environ)


def write_script(data_dir: str) -> str:
    """<data-dir>/post-build-hook, which Nix runs after each build (with no arguments):
    `ferry post-build-hook --data-dir <data-dir>`, as lean as it can start. This Python
    runs it (Nix's PATH may not have ferry on it), without site-packages (-S: it needs
    none, and they cost a third of its time), finding ferry where it is installed now.
    Returns its path."""
    import node

    path = os.path.join(data_dir, SCRIPT)
    where = os.path.dirname(os.path.dirname(os.path.abspath(node.__file__)))
    code = (
        f"import sys; sys.path.insert(0, {where!r}); from node.daemon.posthook import main; main()"
    )
    text = (
        "#!/bin/sh\n"
        "# Nix's post-build-hook (nix.conf: post-build-hook = this file): `ferry post-build-hook\n"
        "# --data-dir DIR`, started lean. Written by `ferry init`; run it again after moving ferry.\n"
        f"exec {_quote(sys.executable)} -S -c {_quote(code)} --data-dir {_quote(data_dir)}\n"
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
