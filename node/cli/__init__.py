"""`ferry`: the command line.

A command's parser and code live in a module of their own, imported only when that
command runs: `ferry --help`, `--version` and the commands that talk to a running node
start without loading libp2p, the store or the simulator."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from node.cli.failed import Failed
from node.cli.parser import Parser

# Exit codes scripts rely on: 0 ok, 1 the operation failed (ui.fail), 2 bad usage
# (argparse), 130 interrupted. `ferry trust` has its own (see node/cli/trust.py).

# command -> (the module whose add_parser defines it, the line `ferry --help` shows).
# In the order `ferry --help` lists them; a module's commands stay together.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": (
        "node.cli.init",
        "create the data directory, node identity, Nix signing key and a config file",
    ),
    "manifest": ("node.cli.manifest", "build a store path's manifest and print a summary"),
    "publish": ("node.cli.publish", "add a store path to the local ferry store"),
    "post-build-hook": (
        "node.cli.hook",
        "Nix's post-build hook: queue a build's outputs for the node to publish",
    ),
    "export": ("node.cli.export", "write a stored path's NAR"),
    "materialize": ("node.cli.export", "write a stored path's tree to a directory"),
    "image": ("node.cli.image", "write a stored path as an EROFS metadata image"),
    "inspect": ("node.cli.image", "list an EROFS image"),
    "gc": ("node.cli.gc", "drop paths no root needs and free their chunks"),
    "verify": ("node.cli.verify", "check every chunk and path in the store"),
    "store": ("node.cli.storecmd", "look at the local store"),
    "root": ("node.cli.storecmd", "GC roots: paths `ferry gc` keeps"),
    "trust": ("node.cli.trust", "builder keys, signed build claims, and quorum decisions"),
    "node": ("node.cli.noderun", "run the ferry node (daemon)"),
    "fetch": (
        "node.cli.netcmd",
        "fetch a store path (or its closure) from peers through the running node",
    ),
    "peers": ("node.cli.netcmd", "list the node's peers"),
    "status": ("node.cli.netcmd", "show the running node's identity, addresses and store"),
    "mount": (
        "node.cli.mountcmd",
        "make a store path appear at DIR, its file data fetched on first read",
    ),
    "realise": (
        "node.cli.mountcmd",
        "make store paths valid in the Nix store from peers, mounted lazily with --lazy",
    ),
    "umount": ("node.cli.mountcmd", "unmount a ferry mount"),
    "mounts": ("node.cli.mountcmd", "list the node's mounts"),
    "service": ("node.cli.service", "install the systemd units for this ferry"),
    "demo": (
        "node.cli.demo",
        "see ferry work on this machine: 3 builders and a client on 127.0.0.1",
    ),
    "doctor": (
        "node.cli.doctor",
        "check this machine and node set-up, and say how to fix what is wrong",
    ),
    "sim": ("sim.cli", "simulate a ferry network in virtual time (flash crowds, churn, liars)"),
}


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


class Commands:
    """What a command module's add_parser is handed: argparse's subparsers, with each
    command's one-line help taken from COMMANDS (it is shown before the module loads)."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        parser: Parser = self._sub.add_parser(name, help=COMMANDS[name][1], **kwargs)
        return parser


def parser(commands: Sequence[str] | None = None) -> Parser:
    """ferry's argument parser, with the full definition of `commands` (all when None)
    and, for the others, just the name and the line `ferry --help` shows."""
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
    wanted = {COMMANDS[c][0] for c in (COMMANDS if commands is None else commands)}
    loaded: set[str] = set()
    for name, (module, line) in COMMANDS.items():
        if module in wanted:
            if module not in loaded:
                loaded.add(module)
                importlib.import_module(module).add_parser(Commands(sub))
        else:
            sub.add_parser(name, help=line, add_help=False)
    return p


def _command(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (ferry's own options
    take no value)."""
    for a in argv:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    command = _command(args_list)
    args = parser([command] if command else []).parse_args(args_list)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except Failed as failure:
        _failed(failure, args)
    except KeyboardInterrupt:
        _interrupted()
    except BaseExceptionGroup as e:
        # Ctrl-C or a failure inside a trio nursery (a command talking to a node) arrives
        # wrapped in a group.
        failed, rest = e.split(Failed)
        if failed is not None and rest is None:
            _failed(_first(failed), args)
        _, rest = e.split(KeyboardInterrupt)
        if rest is None:
            _interrupted()
        raise
    except BrokenPipeError:
        # The reader went away (`ferry ... | head`): not an error of ours.
        sys.stderr.close()
        sys.exit(1)


def _failed(failure: Failed, args: argparse.Namespace) -> None:
    from node.cli import ui  # rich: loaded only when there is something to show

    ui.report_failure(failure, bool(getattr(args, "json", False)))
    sys.exit(failure.code)


def _first(group: BaseExceptionGroup[Failed]) -> Failed:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, Failed)
    return leaf


def _interrupted() -> None:
    print("ferry: error: interrupted", file=sys.stderr)
    sys.exit(130)
