"""`ferry node run`: the daemon, in the foreground."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import trio

from node.cli import Commands, options, storeopt, ui
from node.daemon import config as nodeconfig
from node.daemon import notify
from node.daemon.config import ConfigError, NodeConfig
from node.daemon.control import ControlError
from node.daemon.gateway import GatewayUnavailable
from node.daemon.node import Node
from node.daemon.outbox import OutboxError
from node.local.datadir import default_data_dir
from store.nixcli import NixError
from trust.keyfile import KeyFileError
from trust.policy import PolicyError

log = logging.getLogger("ferry.node")

CONFIG_FILE = "node.toml"


def add_parser(sub: Commands) -> None:
    node = sub.add_parser(
        "node",
        description="The ferry node: serves your store to peers and fetches from them.",
    )
    nsub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    p = nsub.add_parser(
        "run",
        help="run the node in the foreground",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the node in the foreground, logging to standard error, until SIGINT or SIGTERM. "
        "It listens for peers, serves the chunks and claims of the local store, and answers `ferry fetch`, "
        "`ferry publish`, `ferry peers` and `ferry status` through a unix socket (mode 0600) in the data "
        "directory. Once listening it writes its addresses, with /p2p/<peer id>, one a line, to "
        "<data-dir>/node.addr: give one of those to other nodes' --bootstrap.",
        epilog="settings (in the TOML file <data-dir>/node.toml or --config; flags override them):\n"
        + nodeconfig.describe()
        + '\n\nexample node.toml:\n  listen = ["/ip4/0.0.0.0/tcp/4737"]\n'
        '  bootstrap = ["/ip4/192.0.2.7/tcp/4737/p2p/12D3KooW..."]\n  policy = "/etc/ferry/policy.toml"\n'
        '  mdns = false\n  gateway = "127.0.0.1:4738"\n\n'
        "The node's identity (its peer ID) is kept in <data-dir>/identity.key.\n\n"
        "Nix: the gateway signs what it serves with the key in <data-dir>/cache.key; add these to nix.conf:\n"
        "  extra-substituters = http://127.0.0.1:4738\n"
        "  extra-trusted-public-keys = <the line in <data-dir>/cache.pub>",
    )
    p.add_argument(
        "--listen",
        metavar="MULTIADDR",
        action="append",
        help="listen on this multiaddr (repeatable), e.g. /ip4/127.0.0.1/tcp/0 for a free port",
    )
    p.add_argument(
        "--bootstrap",
        metavar="MULTIADDR",
        action="append",
        help="connect to this peer (repeatable; with /p2p/<peer id>)",
    )
    p.add_argument("--policy", metavar="FILE", help="trust policy file (needed to fetch)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"settings file (default: <data-dir>/{CONFIG_FILE} if it exists)",
    )
    p.add_argument(
        "--no-mdns", dest="mdns", action="store_false", default=None, help="no mDNS discovery"
    )
    p.add_argument(
        "--no-dht", dest="dht", action="store_false", default=None, help="no Kademlia DHT"
    )
    p.add_argument(
        "--no-gossip", dest="gossip", action="store_false", default=None, help="no gossipsub"
    )
    p.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        help="serve Nix a binary cache here (default 127.0.0.1:4738; port 0 picks a free one); "
        "point nix at it with `substituters = http://HOST:PORT`",
    )
    p.add_argument(
        "--gateway-public",
        dest="gateway_public",
        action="store_true",
        default=None,
        help="allow --gateway on a non-loopback address (anyone who can connect gets every trusted path)",
    )
    p.add_argument(
        "--no-gateway",
        dest="gateway",
        action="store_const",
        const="off",
        help="no binary-cache endpoint",
    )
    p.add_argument(
        "--nix-store",
        metavar="STORE",
        help="the Nix store to publish from, as Nix's --store (default: the system store)",
    )
    p.add_argument(
        "--watch-store",
        dest="watch_store",
        action="store_true",
        default=None,
        help="publish every path Nix registers from now on, as it appears (builders)",
    )
    p.add_argument(
        "--publish-key",
        metavar="SECRET",
        help="builder key that signs what the node publishes by itself (watch, post-build hook)",
    )
    options.add_data_dir(p)
    p.set_defaults(run=run)

    p = nsub.add_parser(
        "reload",
        help="make the running node read its settings and trust policy again",
        description="Make the running node read node.toml (or its --config) and the trust policy "
        "again, as SIGHUP does (`systemctl reload ferry`). The policy, max_store_size and "
        "publish_key take effect at once; other changed settings are listed as needing a "
        "restart. If the new settings or policy are bad, the node keeps what it runs and this "
        "says why (exit status 1).",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=run_reload)


def run_reload(args: argparse.Namespace) -> None:
    from node.cli import netcmd
    from node.daemon import api

    r: api.Reloaded = netcmd.request(args, api.ReloadRequest())
    if args.json:
        ui.print_json(api.encode(r))
        return
    p = r.policy
    ui.out.print(
        "reloaded; policy "
        + (f"{p.file}: {p.threshold} of {len(p.trusted)} keys" if p else "none (cannot fetch)"),
        markup=False,
        soft_wrap=True,
    )
    if r.changed:
        ui.out.print(f"  now in effect: {', '.join(r.changed)}", markup=False)
    if r.restart_needed:
        ui.out.print(
            f"  changed, but take effect at restart: {', '.join(r.restart_needed)}", markup=False
        )


def load_config(args: argparse.Namespace, data_dir: str) -> NodeConfig:
    path = args.config or os.path.join(data_dir, CONFIG_FILE)
    base = nodeconfig.load(path) if args.config or os.path.exists(path) else NodeConfig()
    # A file's mistakes name the file; a flag's name the flag (see NodeConfig._where).
    return base.with_overrides(
        listen=tuple(args.listen) if args.listen else None,
        bootstrap=tuple(base.bootstrap) + tuple(args.bootstrap) if args.bootstrap else None,
        policy=os.path.abspath(args.policy) if args.policy else None,
        mdns=args.mdns,
        dht=args.dht,
        gossip=args.gossip,
        gateway=args.gateway,
        gateway_public=args.gateway_public,
        nix_store=_absolute_store(args.nix_store),
        watch_store=args.watch_store,
        publish_key=os.path.abspath(args.publish_key) if args.publish_key else None,
    )


def _absolute_store(store: str | None) -> str | None:
    """A chroot store's directory as the node (in another directory) will see it."""
    return os.path.abspath(store) if store and os.path.isdir(store) else store


def run(args: argparse.Namespace) -> None:
    if args.verbose == 0:
        logging.getLogger().setLevel(logging.INFO)
    if args.verbose < 2:
        from p2p.host import (
            quiet_libp2p,  # libp2p takes most of a second to import: only the daemon pays
        )

        quiet_libp2p()
    data_dir = os.path.abspath(args.data_dir or default_data_dir())
    try:
        config = load_config(args, data_dir)
    except ConfigError as e:
        ui.fail(str(e))
    store = storeopt.open_store(argparse.Namespace(data_dir=data_dir), create=True)
    try:
        trio.run(_main, data_dir, config, store, lambda: load_config(args, data_dir))
    except BaseException as e:
        # Start-up failures arrive wrapped in the nurseries' exception groups.
        problem = _user_error(e)
        if problem is None:
            raise
        ui.fail(problem)
    finally:
        store.close()


def _user_error(e: BaseException) -> str | None:
    """The message for a failure that is the user's to fix (bad settings, a busy port)."""
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            found = _user_error(sub)
            if found is not None:
                return found
        return None
    if isinstance(
        e,
        (
            ConfigError,
            ControlError,
            GatewayUnavailable,
            PolicyError,
            KeyFileError,
            NixError,
            OutboxError,
        ),
    ):
        return str(e)
    if isinstance(e, OSError):
        return f"cannot start the node: {e.strerror or e}"
    return None


async def _main(
    data_dir: str, config: NodeConfig, store: Any, reread: Callable[[], NodeConfig]
) -> None:
    node = Node(data_dir, config, store, reread)
    # Signals are caught from before the node says it runs: a SIGTERM sent the moment
    # it is up (a test, systemd) must stop it cleanly, not kill it.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            # What start-up built (libp2p, the DHT, the store's state) lives as long as the
            # node: the collector need not walk it again. A full collection of it stopped
            # everything for 70-100 ms, and every narinfo Nix was waiting on waited too.
            gc.freeze()
            log.info("node %s running on %s", node.peer_id, data_dir)
            notify.send(notify.encode(READY="1", STATUS=f"node {node.peer_id} running"))
            async for sig in signals:
                if sig == signal.SIGHUP:
                    # `systemctl reload ferry`: the settings and policy, read again.
                    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                    notify.send(notify.encode(RELOADING="1", MONOTONIC_USEC=str(usec)))
                    try:
                        await node.reload()
                    except ControlError as e:
                        log.error("SIGHUP: %s", e)
                    notify.send(notify.encode(READY="1"))
                    continue
                log.info("%s: stopping", signal.Signals(sig).name)
                break
            notify.send(notify.encode(STOPPING="1"))
            nursery.cancel_scope.cancel()
