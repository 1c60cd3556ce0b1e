"""`ferry`: the command line. Each subcommand lives in a module of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from node.cli import (
    demo,
    doctor,
    export,
    gc,
    image,
    init,
    manifest,
    mountcmd,
    netcmd,
    noderun,
    publish,
    simcmd,
    storecmd,
    trust,
    ui,
)
from node.cli.parser import Parser

# Exit codes scripts rely on: 0 ok, 1 the operation failed (ui.fail), 2 bad usage
# (argparse), 130 interrupted. `ferry trust` has its own (see node/cli/trust.py).


class _Version(argparse.Action):
    """--version, reading the installed metadata only when asked (it takes a while to import)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("ferry")
        except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
            version = "unknown (not installed)"
        print(f"ferry {version}")
        parser.exit(0)


def parser() -> Parser:
    p = Parser(
        prog="ferry",
        description="Peer-to-peer substitution for Nix stores: content-addressed chunks, "
        "quorum-signed builds, lazy EROFS mounts.",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    p.add_argument("--version", action=_Version, help="print ferry's version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    init.add_parser(sub)
    manifest.add_parser(sub)
    publish.add_parser(sub)
    export.add_parser(sub)
    image.add_parser(sub)
    gc.add_parser(sub)
    storecmd.add_parser(sub)
    trust.add_parser(sub)
    noderun.add_parser(sub)
    netcmd.add_parser(sub)
    mountcmd.add_parser(sub)
    demo.add_parser(sub)
    doctor.add_parser(sub)
    simcmd.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except KeyboardInterrupt:
        ui.fail("interrupted", 130)
    except BaseExceptionGroup as e:
        # Ctrl-C inside a trio nursery (a command talking to a node) arrives wrapped in a group.
        _, rest = e.split(KeyboardInterrupt)
        if rest is None:
            ui.fail("interrupted", 130)
        raise
    except BrokenPipeError:
        # The reader went away (`ferry ... | head`): not an error of ours.
        sys.stderr.close()
        sys.exit(1)
