"""`ferry doctor`: what this machine can do, and how to fix what it cannot.

Each check is `ok`, `warn` (ferry works, with less: no lazy mounts, no Nix) or `fail`
(something the user asked for cannot work: a busy port, an unreadable policy, a
bootstrap peer nobody answers on); every check that is not ok says how to fix it. Exit
status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import multiaddr
import trio

from node.cli import Commands, options, ui
from node.cli.noderun import CONFIG_FILE
from node.daemon import api, control
from node.daemon import config as nodeconfig
from node.gateway import key as gateway_key
from node.local.datadir import default_data_dir
from ondemand.probe import probe
from p2p import identity
from trust import policyfile
from trust.policy import PolicyError

CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # ok | warn | fail
    detail: str
    fix: str = ""


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "doctor",
        description="Check what ferry needs and say how to fix each problem: the kernel and permissions for "
        "lazy mounts (which backend `ferry mount` will use), the data directory and its files, the node's "
        "settings and trust policy, the ports it listens on, whether Nix is installed and pointed at the "
        "node's binary cache, and whether peers are reachable.",
        epilog="exit status: 0 nothing failed (warnings allowed), 1 some check failed",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    report = probe()
    data_dir = os.path.abspath(args.data_dir or default_data_dir())
    checks = [_kernel(report), *_data_dir(data_dir)]
    config, problem = _config(data_dir)
    checks.append(problem)
    running = control.running(data_dir)
    if config is not None:
        checks.append(_policy(config))
        if running:
            checks.append(_running_policy(data_dir, config))
        checks += _ports(config, running)
        checks += _nix(data_dir, config)
        checks.append(_peers(data_dir, config, running))
        if running:
            checks.append(_reachability(data_dir))
    failed = any(c.level == "fail" for c in checks)
    if args.json:
        ui.print_json(
            {
                **asdict(report),
                "chosen": report.chosen,
                "data_dir": data_dir,
                "checks": [asdict(c) for c in checks],
            }
        )
    else:
        ui.out.print(
            f"kernel {report.kernel}, {'root' if report.root else 'not root'}", markup=False
        )
        for b in report.backends:
            ui.out.print(f"  {'ok ' if b.usable else 'no '} {b.name}", markup=False)
            for m in b.missing:
                ui.out.print(f"        needs: {m}", markup=False)
        ui.out.print(f"ferry mount will use: {report.chosen}\n", markup=False)
        for c in checks:
            ui.out.print(f"{c.level:<4} {c.name}: {c.detail}", markup=False, soft_wrap=True)
            if c.fix:
                ui.out.print(f"       fix: {c.fix}", markup=False, soft_wrap=True)
    if failed:
        raise SystemExit(1)


def _kernel(report: Any) -> Check:
    if report.chosen == "materialize":
        needs = "; ".join(m for b in report.backends[:2] for m in b.missing)
        advice = _distro_advice(_os_release())
        return Check(
            "lazy mounts",
            "warn",
            "not available: `ferry mount` writes trees out whole (materialize), and "
            "`ferry realise` works without --lazy only",
            f"for lazy mounts: {needs}" + (f". {advice}" if advice else ""),
        )
    return Check("lazy mounts", "ok", f"{report.chosen} backend")


def _os_release() -> dict[str, str]:
    try:
        with open("/etc/os-release") as f:
            return {
                k: v.strip().strip('"')
                for k, _, v in (line.strip().partition("=") for line in f)
                if k
            }
    except OSError:
        return {}


def _distro_advice(release: dict[str, str]) -> str:
    """What a user of this distribution can do to get a lazy backend. Debian's own
    kernels (checked 2026-12: bookworm 6.1 and bookworm-backports 6.12, trixie 6.12)
    have neither backend: too old for fanotify pre-content events, and built without
    the cachefiles ondemand options. trixie-backports' 7.3 has what fanotify needs."""
    if release.get("ID") != "debian":
        return ""
    codename = release.get("VERSION_CODENAME", "")
    newer = (
        "install the backports kernel (apt install -t trixie-backports linux-image-amd64, "
        "7.x: the fanotify backend) and reboot into it"
    )
    if codename == "bookworm":
        newer = (
            "Debian 12's kernels (6.1, backports 6.12) cannot: upgrade to Debian 13 and " + newer
        )
    elif codename != "trixie":
        newer = "run Linux 6.14 or later (the fanotify backend)"
    return (
        f"On Debian: {newer}; or rebuild the cachefiles and erofs modules with "
        "CONFIG_CACHEFILES_ONDEMAND=y and CONFIG_EROFS_FS_ONDEMAND=y (docs/operations.md, "
        '"Lazy store paths"); until then `ferry realise` without --lazy and the gateway '
        "fetch paths whole"
    )


def _data_dir(data_dir: str) -> list[Check]:
    if not os.path.exists(data_dir):
        parent = os.path.dirname(data_dir)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if os.access(parent or "/", os.W_OK):
            return [
                Check(
                    "data directory",
                    "warn",
                    f"{data_dir} does not exist yet",
                    f"ferry init --data-dir {data_dir}",
                )
            ]
        return [
            Check(
                "data directory",
                "fail",
                f"{data_dir} does not exist and {parent} is not writable",
                "run as a user who may create it, or choose another with --data-dir (or FERRY_DATA_DIR)",
            )
        ]
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        return [
            Check(
                "data directory",
                "fail",
                f"{data_dir} is not readable and writable by this user",
                f"run as its owner, or: chown -R $(id -u) {data_dir}",
            )
        ]
    out = [Check("data directory", "ok", data_dir)]
    missing = [
        f
        for f in (identity.FILE, gateway_key.SECRET, CONFIG_FILE)
        if not os.path.exists(os.path.join(data_dir, f))
    ]
    if missing:
        out.append(
            Check(
                "node files",
                "warn",
                f"missing {', '.join(missing)} (a node makes the keys on first start)",
                f"ferry init --data-dir {data_dir}",
            )
        )
    else:
        out.append(Check("node files", "ok", "identity, Nix signing key and node.toml present"))
    return out


def _config(data_dir: str) -> tuple[nodeconfig.NodeConfig | None, Check]:
    path = os.path.join(data_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return nodeconfig.NodeConfig(), Check("settings", "ok", f"no {CONFIG_FILE}: the defaults")
    try:
        return nodeconfig.load(path), Check("settings", "ok", path)
    except nodeconfig.ConfigError as e:
        return None, Check(
            "settings", "fail", str(e), f"edit {path} (docs/configuration.md lists every setting)"
        )


def _policy(config: nodeconfig.NodeConfig) -> Check:
    if not config.policy:
        return Check(
            "trust policy",
            "warn",
            "none: the node serves but cannot fetch",
            "write a policy file (docs/configuration.md) and set `policy` in node.toml",
        )
    try:
        p = policyfile.load(config.policy)
    except PolicyError as e:
        return Check("trust policy", "fail", str(e), f"fix {config.policy}")
    return Check("trust policy", "ok", f"{config.policy}: {p.threshold} of {len(p.trusted)} keys")


def _running_policy(data_dir: str, config: nodeconfig.NodeConfig) -> Check:
    """What the running node decides with, beside what the files on disk say."""
    try:
        status: api.Status = trio.run(control.call, data_dir, api.StatusRequest())
    except control.ControlError as e:
        return Check("running policy", "warn", f"cannot ask the node: {e}")
    p = status.policy_in_use
    if p is None:
        if config.policy:
            return Check(
                "running policy",
                "warn",
                f"the node runs without a policy, but node.toml names {config.policy}",
                "`ferry node reload` (or `systemctl reload ferry`) makes it read it",
            )
        return Check("running policy", "ok", "the node runs without a policy, as configured")
    runs = f"{p.file}: {p.threshold} of {len(p.trusted)} keys"
    try:
        on_disk = policyfile.load(p.file)
    except PolicyError as e:
        return Check(
            "running policy",
            "warn",
            f"the node runs {runs}; the file has changed and is now bad ({e})",
            f"fix {p.file}, then `ferry node reload`",
        )
    if (
        p.threshold == on_disk.threshold
        and list(p.trusted) == [k.encode() for k in on_disk.trusted]
        and p.on_conflict == str(on_disk.on_conflict)
    ):
        return Check("running policy", "ok", f"the node runs {runs}, as the file says")
    return Check(
        "running policy",
        "warn",
        f"the node runs {runs}, not what the file now says",
        "`ferry node reload` (or `systemctl reload ferry`) makes it read it again",
    )


def _tcp_ports(config: nodeconfig.NodeConfig) -> list[tuple[str, str, int]]:
    """(what, host, port) the node would bind."""
    out = []
    for a in config.listen:
        try:
            ma = multiaddr.Multiaddr(a)
            host = (
                ma.value_for_protocol("ip4") if "ip4" in [p.name for p in ma.protocols()] else "::"
            )
            out.append((f"listen {a}", host, int(ma.value_for_protocol("tcp"))))
        except Exception:  # noqa: BLE001 - not an IP/TCP address (the node reports what it cannot use)
            continue
    if config.gateway != "off":
        host, port = config.gateway_bind
        out.append((f"gateway {config.gateway}", host, port))
    return out


def _ports(config: nodeconfig.NodeConfig, running: bool) -> list[Check]:
    if running:
        return [Check("ports", "ok", "the node is running and holds them")]
    out = []
    for what, host, port in _tcp_ports(config):
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                out.append(Check("port", "ok", f"{what}: free"))
            except OSError as e:
                out.append(
                    Check(
                        "port",
                        "fail",
                        f"{what}: cannot bind {host}:{port} ({e.strerror})",
                        "stop the program using it (`ss -ltnp` names it) or choose another port in "
                        "node.toml",
                    )
                )
    return out


def _nix(data_dir: str, config: nodeconfig.NodeConfig) -> list[Check]:
    if shutil.which("nix-store") is None:
        return [
            Check(
                "nix",
                "warn",
                "Nix is not installed: the binary cache has no local client",
                "install Nix (Debian: apt-get install nix-bin)",
            )
        ]
    out = [
        Check(
            "nix",
            "ok",
            subprocess.run(
                ["nix-store", "--version"], capture_output=True, text=True
            ).stdout.strip()
            or "installed",
        )
    ]
    if config.gateway == "off":
        return out
    try:
        shown = subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", "show-config", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        settings = json.loads(shown.stdout) if shown.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        settings = None
    if settings is None:
        return out + [
            Check(
                "nix.conf",
                "warn",
                "could not read Nix's settings (`nix show-config`)",
                "check that `nix show-config` works for this user",
            )
        ]
    url = f"http://{config.gateway}"
    subs = settings.get("substituters", {}).get("value", [])
    keys = settings.get("trusted-public-keys", {}).get("value", [])
    pub_path = os.path.join(data_dir, gateway_key.PUBLIC)
    ours = Path(pub_path).read_text().strip() if os.path.exists(pub_path) else None
    missing = []
    if not any(s.rstrip("/") == url for s in subs):
        missing.append(f"extra-substituters = {url}")
    if ours is None:
        missing.append("extra-trusted-public-keys = <the line in cache.pub, made by `ferry init`>")
    elif ours not in keys:
        missing.append(f"extra-trusted-public-keys = {ours}")
    if missing:
        out.append(
            Check(
                "nix.conf",
                "warn",
                "Nix does not use this node's binary cache",
                "add to /etc/nix/nix.conf (then restart nix-daemon, if one runs): "
                + "; ".join(missing),
            )
        )
    else:
        out.append(Check("nix.conf", "ok", f"substitutes from {url}, trusts the node's key"))
    return out


def _reachability(data_dir: str) -> Check:
    """What the running node's peers found when they dialed it back."""
    status: api.Status = trio.run(control.call, data_dir, api.StatusRequest())
    if status.reachability == "public":
        return Check("reachability", "ok", f"public: peers dial it at {status.public_addr}")
    if status.reachability == "private" and status.relays.slots:
        n = len(status.relays.slots)
        return Check(
            "reachability",
            "ok",
            f"private (behind a NAT or a firewall): peers reach it through {n} "
            f"relay{'s' if n > 1 else ''}, and punch through to a direct connection where "
            "its router lets them",
        )
    if status.reachability == "private":
        return Check(
            "reachability",
            "warn",
            "private: peers cannot dial it (behind a NAT or a firewall), and no relay holds a "
            "slot for it; it can fetch from public nodes, but nodes outside this network "
            "cannot fetch from it",
            "keep a public node that relays among the bootstrap peers, or forward the node's "
            "TCP port on the router (docs/operations.md, reachability)",
        )
    return Check(
        "reachability",
        "warn" if status.peers else "ok",
        "unknown: no peer has dialed it back yet" + ("" if status.peers else " (it has no peers)"),
    )


def _peers(data_dir: str, config: nodeconfig.NodeConfig, running: bool) -> Check:
    if running:
        status: api.Status = trio.run(control.call, data_dir, api.StatusRequest())
        if status.peers:
            return Check("peers", "ok", f"{status.peers} connected")
        return Check(
            "peers",
            "warn",
            "the node runs but has no peers",
            "add a peer's address (from its node.addr) to `bootstrap` in node.toml, or enable mdns on a LAN",
        )
    unreachable = []
    for a in config.bootstrap:
        try:
            ma = multiaddr.Multiaddr(a)
            host = ma.value_for_protocol("ip4")
            port = int(ma.value_for_protocol("tcp"))
        except Exception:  # noqa: BLE001 - dns or other transports: not checked here
            continue
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
                pass
        except OSError as e:
            unreachable.append(f"{host}:{port} ({e.strerror or 'timed out'})")
    if unreachable:
        return Check(
            "peers",
            "fail",
            f"bootstrap peers not reachable: {', '.join(unreachable)}",
            "check the address (copy it from the peer's node.addr), that the peer runs, and firewalls",
        )
    if not config.bootstrap and not config.mdns:
        return Check(
            "peers",
            "warn",
            "no bootstrap peers and mdns off: the node will find no one",
            "add `bootstrap` addresses to node.toml, or enable mdns",
        )
    return Check(
        "peers",
        "ok",
        f"{len(config.bootstrap)} bootstrap peers reachable"
        + (", mdns on" if config.mdns else "")
        + " (the node is not running)",
    )
