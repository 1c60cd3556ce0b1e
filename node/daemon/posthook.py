"""What Nix's post-build hook does, with as little as Python can start with: queue the
build's outputs in the outbox (outbox.py) and tell a running node. It runs after every
build, so <data-dir>/post-build-hook starts Python without site-packages (-S) and
imports only this module and the standard library: about 40 ms of the hook's time.

Nix 2.8 runs the hook with an empty OUT_PATHS; then DRV_PATH's outputs are queued, and
the node reads them from Nix's database."""

from __future__ import annotations

# The C module, not `socket`: the wrapper imports enum and selectors, a quarter of the
# hook's start, for one connect and one send.
import _socket
import os
import sys
from collections.abc import Mapping

from node.daemon.outbox import Outbox, OutboxError
from node.local.datadir import CONTROL_SOCKET

# msgpack of {"op": outbox.WAKE_OP}, one length-prefixed frame (control.py); written
# out so the hook need not import msgpack. A test checks it against msgpack's.
WAKE_FRAME = b"\x00\x00\x00\x0b\x81\xa2op\xa6outbox"
WAKE_TIMEOUT = 0.5  # seconds the hook waits for a running node to take note


class NotFromNix(Exception):
    """Neither OUT_PATHS nor DRV_PATH is set: someone ran the hook by hand."""


def run(data_dir: str, store: str, env: Mapping[str, str]) -> list[str]:
    """Queue what the build made; the warnings to show (the build stands regardless).
    Raises NotFromNix."""
    out_paths = env.get("OUT_PATHS", "").split()
    drv = env.get("DRV_PATH", "").strip()
    if not out_paths and not drv:
        raise NotFromNix(
            "neither OUT_PATHS nor DRV_PATH is set: Nix runs this after a build "
            "(post-build-hook in nix.conf); to publish by hand use `ferry publish`"
        )
    what = " ".join(out_paths) if out_paths else f"the outputs of {drv}"
    if not os.path.isdir(data_dir):
        return [
            f"no ferry data directory at {data_dir}: {what} not queued (`ferry init` makes one)"
        ]
    try:
        with Outbox(data_dir) as outbox:
            if out_paths:
                outbox.add(store, out_paths)
            else:
                outbox.add(store, [drv], derivation=True)
    except OutboxError as e:
        return [f"cannot queue {what}: {e}"]
    if not wake(data_dir):
        return [f"no node is running on {data_dir}; it publishes {what} when it starts"]
    return []


def wake(data_dir: str) -> bool:
    """Tell a running node to look at its outbox; False if none answers."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(WAKE_TIMEOUT)
        s.connect(os.path.join(data_dir, CONTROL_SOCKET))
        s.sendall(WAKE_FRAME)
        return bool(s.recv(4))  # the node's answer has begun: it has taken note
    except OSError:
        return False
    finally:
        s.close()


def report(data_dir: str, store: str, env: Mapping[str, str]) -> None:
    """`run`, with its problems on standard error (Nix shows them in the build log); exit
    status 0 whatever happened, so the build stands, but 2 when not run by Nix."""
    try:
        warnings = run(data_dir, store, env)
    except NotFromNix as e:
        print(f"ferry post-build-hook: {e}", file=sys.stderr)
        sys.exit(2)
    for w in warnings:
        print(f"ferry post-build-hook: warning: {w}", file=sys.stderr)


def main() -> None:
    """The hook script's entry: `--data-dir DIR [--store STORE]`, nothing else."""
    args = sys.argv[1:]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    report(opts.get("--data-dir", ""), opts.get("--store", ""), os.environ)
