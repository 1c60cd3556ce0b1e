"""`ferry init`: a data directory ready for `ferry node run`, and the nix.conf lines."""

from __future__ import annotations

import argparse
import os

from node.cli import Commands, hook, options, ui
from node.cli.noderun import CONFIG_FILE
from node.daemon import config as nodeconfig
from node.gateway import key as gateway_key
from node.local.datadir import default_data_dir
from p2p import identity
from store import userfile
from store.userfile import UserFileError
from trust import keyfile, policyfile
from trust.policy import PolicyError


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "init",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prepare a data directory for `ferry node run`: the directory itself (mode 0700), the "
        "node's libp2p identity (identity.key: its peer ID), the node's Nix signing key (cache.key and "
        "cache.pub: the gateway signs what it serves with it), node.toml, listing every setting with its "
        "meaning and default, and post-build-hook, the script Nix runs after each build on a builder. "
        "Files that exist are kept, never overwritten (post-build-hook is written again: it names the "
        "ferry that ran init). Then prints the lines to add to nix.conf.",
        epilog="next: `ferry node run`; check the machine with `ferry doctor`.",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="the trust policy to fetch under (written into node.toml; checked now)",
    )
    p.add_argument(
        "--bootstrap",
        metavar="MULTIADDR",
        action="append",
        help="a peer to connect to at start, with /p2p/<peer id> (repeatable)",
    )
    p.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        default=None,
        help=f"where the Nix binary cache listens (default {nodeconfig.DEFAULT_GATEWAY})",
    )
    options.add_data_dir(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    data_dir = os.path.abspath(args.data_dir or default_data_dir())
    overrides: dict[str, object] = {}
    if args.policy:
        try:
            policyfile.load(args.policy)
        except PolicyError as e:
            ui.fail(str(e))
        overrides["policy"] = os.path.abspath(args.policy)
    if args.bootstrap:
        overrides["bootstrap"] = list(args.bootstrap)
    if args.gateway:
        overrides["gateway"] = args.gateway
    text = nodeconfig.commented(overrides)
    try:
        nodeconfig.parse(text, "the new node.toml")  # what we write must load
    except nodeconfig.ConfigError as e:
        ui.fail(str(e))
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        ui.fail(f"cannot create {data_dir}: {e.strerror} (choose another with --data-dir)")
    if not os.access(data_dir, os.W_OK):
        ui.fail(
            f"{data_dir} is not writable by this user (choose another with --data-dir, or run as its owner)"
        )
    done: list[tuple[str, str]] = []
    existed = os.path.exists(os.path.join(data_dir, identity.FILE))
    try:
        keys = identity.load_or_create(data_dir)
        done.append((identity.FILE, "kept" if existed else "created"))
        existed = os.path.exists(os.path.join(data_dir, gateway_key.SECRET))
        nix_key = gateway_key.load_or_create(data_dir)
        done.append(
            (f"{gateway_key.SECRET}, {gateway_key.PUBLIC}", "kept" if existed else "created")
        )
    except keyfile.KeyFileError as e:
        ui.fail(str(e))
    try:
        hook_script = hook.write_script(data_dir)
    except OSError as e:
        ui.fail(f"cannot write {os.path.join(data_dir, hook.SCRIPT)}: {e.strerror}")
    done.append((hook.SCRIPT, "written"))
    config_path = os.path.join(data_dir, CONFIG_FILE)
    if os.path.exists(config_path):
        done.append((CONFIG_FILE, "kept (not overwritten)"))
    else:
        try:
            userfile.write_atomically(config_path, text.encode(), "the node config file")
        except UserFileError as e:
            ui.fail(str(e))
        done.append((CONFIG_FILE, "created"))
    from libp2p.peer.id import ID

    ui.out.print(f"data directory {data_dir}", markup=False)
    for name, what in done:
        ui.out.print(f"  {name}: {what}", markup=False)
    ui.out.print(f"peer ID  {ID.from_pubkey(keys.public_key)}", markup=False)
    gateway = str(overrides.get("gateway", nodeconfig.DEFAULT_GATEWAY))
    ui.out.print(
        "\nadd to /etc/nix/nix.conf, then restart nix-daemon (systemctl restart nix-daemon):",
        markup=False,
    )
    ui.out.print(f"  extra-substituters = http://{gateway}", markup=False)
    ui.out.print(f"  extra-trusted-public-keys = {nix_key.public.encode()}", markup=False)
    # A multi-user daemon ignores substituters from an untrusted user's own nix.conf: the
    # obvious per-user file would silently do nothing.
    ui.out.print(
        "  (~/.config/nix/nix.conf works only without a daemon, or for a user in the "
        "daemon's trusted-users)",
        markup=False,
    )
    ui.out.print(
        f"on a builder, to publish every build as it finishes, add also:\n"
        f"  post-build-hook = {hook_script}\n"
        "  and set publish_key in node.toml (or watch_store = true to publish every new path)",
        markup=False,
    )
    if "policy" not in overrides:
        ui.out.print(
            "\nto fetch, the node needs a trust policy: set `policy` in node.toml to a policy file "
            "(see docs/configuration.md; builder keys come from `ferry trust keygen`)",
            markup=False,
        )
    ui.out.print(f"then start it:  ferry node run --data-dir {data_dir}", markup=False)
