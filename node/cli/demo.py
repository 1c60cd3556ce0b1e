"""`ferry demo`: the whole idea on one machine, with embedded defaults.

Three builder nodes and one client run as separate `ferry node run` processes on
127.0.0.1, in a temporary directory. The builders publish the same closure and each signs
build claims: with Nix, one Nix builds into a scratch store (`demo-app-1.0`, referring to
`demo-lib-1.0`, which holds this Python's standard library); without Nix, the standard
library wrapped as a store path. The client, whose policy wants 2 of the 3 builders to
agree, fetches it over libp2p, shows the quorum's verdict, mounts it (lazily, with
fanotify and EROFS, as root on a capable kernel; else by materializing it), reads files
back, and then fetches version 1.1 (a few files changed, every store path new) as diffs
against the first. Everything is stopped, unmounted and removed at the end, on Ctrl-C, or
on SIGTERM; `--keep` leaves the network running instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.cli import Commands, netcmd, ui
from node.cli.localnet import LocalNet, LocalNetError, LocalNode, detach, mounts_under
from node.daemon import api, control
from node.daemon.control import ControlError
from store import nixcli, nixconf
from store.source import Source, tree_size
from trust import keyfile, policyfile
from trust.key import SecretKey
from trust.policy import QuorumPolicy

# Parts of the stdlib left out to keep the demo quick; what remains is ~70 MB of real
# modules, C extensions and libpython's static archive.
_SKIP = {"site-packages", "test", "__pycache__", "idlelib", "tkinter", "lib2to3", "ensurepip"}
NAME = "demo-stdlib"
BUILDERS = 3
THRESHOLD = 2
# Files read back through the mount (those present in the tree are read).
READ_BACK = (
    "os.py",
    "json/__init__.py",
    "email/message.py",
    "asyncio/base_events.py",
    "collections/__init__.py",
)

# With Nix: a two-path closure, as nixpkgs would build it: a library (the stdlib's
# modules, some edited in 1.1) and an app that refers to it. The version is in both
# names, so 1.1 is a new store path throughout, as after a rebuild.
NIX_EXPR = r"""
{ version, stdlib }:
let
  mk = name: script: attrs: derivation ({
    inherit name version; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/bin:/usr/bin"; args = [ "-c" script ];
  } // attrs);
  skip = [ "site-packages" "dist-packages" "test" "tests" "idlelib" "__pycache__" "tkinter" "lib2to3" "ensurepip" ];
  src = builtins.path { path = /. + stdlib; name = "demo-stdlib-src";
                        filter = p: t: !(builtins.elem (baseNameOf p) skip); };
  lib = mk "demo-lib-${version}" ''
    mkdir -p $out/lib
    cp -r $src $out/lib/python
    chmod -R u+w $out/lib/python
    if [ "$version" != 1.0 ]; then
      n=0
      for f in $out/lib/python/*.py; do
        n=$((n + 1))
        [ $((n % 25)) = 1 ] && echo "# changed in demo $version" >> $f
      done
    fi
    echo $version > $out/VERSION
  '' { inherit src; };
in mk "demo-app-${version}" ''
  mkdir -p $out/bin
  printf '#!/bin/sh\necho "demo-app %s, library in %s"\n' $version $lib > $out/bin/demo-app
  chmod +x $out/bin/demo-app
'' { inherit lib; }
"""


@dataclass
class Release:
    """One version as the builders publish it."""

    root: str  # the store path the client fetches, with its closure (a plain tree's is known once published)
    paths: tuple[str, ...]  # what each builder publishes
    files: str  # the store path whose files are mounted and read back
    tree: Path  # where those files are on this machine, to compare with
    store: str | None  # the Nix chroot store the paths are in (None: plain directories)


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "demo",
        description="Start 3 builder nodes and a client as separate processes on 127.0.0.1 (in a temporary "
        "directory). The builders publish a real tree (this Python's standard library, or --tree DIR) as a "
        "store path and sign build claims; the client, with a 2-of-3 trust policy, fetches it over libp2p, "
        "shows the quorum verdict, mounts it (lazily as root on a kernel with fanotify pre-content events and "
        "file-backed EROFS, else by writing it out), reads files back, then fetches a new version as diffs "
        "against the old one. Ends with a table of what moved. Everything is stopped and removed at the end "
        "or on Ctrl-C.",
        epilog="exit status: 0 done, 1 a step failed (the message says which), 130 interrupted",
    )
    p.add_argument(
        "--tree", metavar="DIR", help="publish DIR instead of the Python standard library"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the network running at the end and print how to point nix at the client's "
        "binary cache, and how to stop it",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.tree and not Path(args.tree).is_dir():
        ui.fail(f"{args.tree}: not a directory")
    root = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    # The demo's Nix (its builds, and the nodes' queries of its scratch store) reads only
    # configuration of ours: a fresh Debian's nix-bin cannot build as it comes.
    net = LocalNet(root, outlive=args.keep, env=nixconf.environ(root))
    kept = False

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = Demo(net, Path(args.tree) if args.tree else None).run()
        if args.keep:
            _print_keep(net, summary)
            kept = True
    except LocalNetError as e:
        ui.fail(str(e))
    except ControlError as e:
        ui.fail(
            f"{e}\n(node logs are in {root} until the demo exits; rerun with --keep to look at them)",
            netcmd.EXIT[e.failure],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not kept:
            _clean_up(net, root)


def _clean_up(net: LocalNet, root: Path) -> None:
    # A second Ctrl-C must not leave half the network running.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        net.stop()
        for point in mounts_under(root):
            detach(point)  # the client unmounts when it stops; this is for one that was killed
        if not mounts_under(root):
            _remove(root)
        else:
            ui.err.print(
                f"ferry demo: could not unmount everything under {root}; left it in place",
                markup=False,
            )
    finally:
        signal.signal(signal.SIGINT, old)


def _remove(root: Path) -> None:
    """rm -rf, read-only directories included (Nix's store paths and materialized trees are)."""

    def make_writable(func: Callable[..., Any], path: str, exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass  # what is left is reported below

    shutil.rmtree(root, onerror=make_writable)
    if root.exists():
        ui.err.print(f"ferry demo: could not remove all of {root}", markup=False)


class Demo:
    def __init__(self, net: LocalNet, tree: Path | None) -> None:
        self.net = net
        self.root = net.root
        self.tree = tree
        self.rows: list[tuple[str, ...]] = []
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        ui.out.print(f"[{time.monotonic() - self.t0:5.1f}s] {text}", markup=False, soft_wrap=True)

    def run(self) -> dict[str, Any]:
        self.say(f"working in {self.root} (removed at the end)")
        releases = self._nix_releases() if self.tree is None and nixcli.is_available() else None
        if releases is None:
            releases = self._tree_releases()
        policy = self._keys()
        builders, client = self._start(policy)
        for i, rel in enumerate(releases):
            self._publish(builders, rel)
            if i == 0:
                self._fetch(client, rel.root, "first fetch")
                self._mount_and_read(client, rel)
            else:
                self._fetch(client, rel.root, "update (diffs)")
        self._table()
        return {"client": client, "builders": builders, "root": releases[-1].root}

    # --- steps

    def _tree_releases(self) -> list[Release]:
        out = []
        for tree in self._trees():
            out.append(Release("", (str(tree),), "", tree, None))
        return out

    def _nix_releases(self) -> list[Release] | None:
        """Two generations of a closure built by Nix into a scratch store, or None (with
        the reason said) if Nix cannot build here."""
        store = self.root / "nix"
        (self.root / "demo.nix").write_text(NIX_EXPR)
        env = {**(self.net.env or os.environ), "HOME": str(self.root)}
        stdlib = self.tree or Path(sysconfig.get_paths()["stdlib"])
        out = []
        for version in ("1.0", "1.1"):
            with ui.err.status(f"building demo-app-{version} and demo-lib-{version} with Nix ..."):
                # A chroot store builds in a sandbox; store.nixconf lets the host's /bin/sh and tools in.
                r = subprocess.run(
                    [
                        "nix-build",
                        "--store",
                        str(store),
                        str(self.root / "demo.nix"),
                        "--no-out-link",
                        "--argstr",
                        "version",
                        version,
                        "--argstr",
                        "stdlib",
                        str(stdlib),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
            if r.returncode != 0:
                # The first error is the cause; later ones name the derivations that failed with it.
                lines = r.stderr.strip().splitlines()
                cause = next(
                    (line for line in lines if line.startswith("error:")),
                    lines[-1] if lines else "no output",
                )
                self.say(f"nix-build failed here ({cause}); using a plain tree instead")
                return None
            app = r.stdout.split()[-1]
            closure = subprocess.run(
                ["nix-store", "--store", str(store), "-qR", app],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout.split()
            lib = next(p for p in closure if f"-demo-lib-{version}" in p)
            out.append(
                Release(
                    app, tuple(closure), lib, store / lib.lstrip("/") / "lib" / "python", str(store)
                )
            )
        self.say(
            f"built with Nix: {out[0].root} and its library, then version 1.1 of both "
            f"({_size(out[0].tree) / 1e6:,.1f} MB of files)"
        )
        return out

    def _trees(self) -> tuple[Path, Path]:
        src = self.root / "src"
        v1 = src / f"{NAME}-1.0"
        v2 = src / f"{NAME}-1.1"
        origin = self.tree or Path(sysconfig.get_paths()["stdlib"])
        with ui.progress("staging the sample tree", tree_size(str(origin))) as advance:

            def copy(s: str, d: str) -> None:
                shutil.copy2(s, d)
                advance(os.path.getsize(d))

            shutil.copytree(
                origin,
                v1,
                symlinks=True,
                copy_function=copy,
                ignore=None if self.tree else (lambda d, names: [n for n in names if n in _SKIP]),
            )
        shutil.copytree(v1, v2, symlinks=True)
        changed = _new_version(v2)
        self.say(
            f"sample tree: {origin} ({_size(v1) / 1e6:,.1f} MB); version 1.1 changes {changed} files"
        )
        return v1, v2

    def _keys(self) -> Path:
        keys = self.root / "keys"
        keys.mkdir()
        publics = []
        for i in range(1, BUILDERS + 1):
            k = SecretKey.generate(f"demo-builder-{i}")
            keyfile.write_secret(str(keys / f"builder-{i}.secret"), k)
            publics.append(k.public)
        policy = self.root / "policy.toml"
        policy.write_text(policyfile.dump(QuorumPolicy(tuple(publics), THRESHOLD)))
        return policy

    def _start(self, policy: Path) -> tuple[list[LocalNode], LocalNode]:
        with ui.err.status("starting 3 builder nodes and a client on 127.0.0.1 ..."):
            builders = [
                self.net.start(f"builder-{i}", config='gateway = "off"\n')
                for i in range(1, BUILDERS + 1)
            ]
            for b in builders:
                self.net.wait_ready(b)
            boot = tuple(x for b in builders for x in ("--bootstrap", b.addr))
            client = self.net.start(
                "client", config='gateway = "127.0.0.1:0"\n', args=("--policy", str(policy), *boot)
            )
            self.net.wait_ready(client)
        self.say(
            f"started {len(builders)} builders and a client (pids "
            f"{', '.join(str(n.proc.pid) for n in self.net.nodes)}); client policy: {THRESHOLD} of "
            f"{BUILDERS} builders must sign the same result"
        )
        return builders, client

    def _publish(self, builders: list[LocalNode], rel: Release) -> None:
        results: list[api.Published] = []

        async def publish_all() -> None:
            async def one(i: int, b: LocalNode) -> None:
                for path in rel.paths:
                    plain = rel.store is None
                    req = api.PublishRequest(
                        Source(path=path, name=Path(path).name if plain else None, store=rel.store),
                        key=str(self.root / "keys" / f"builder-{i}.secret"),
                    )
                    results.append(await control.call(str(b.data_dir), req))

            async with trio.open_nursery() as n:
                for i, b in enumerate(builders, 1):
                    n.start_soon(one, i, b)

        with ui.err.status(f"builders publishing {Path(rel.root).name} ..."):
            trio.run(publish_all)
        by_path: dict[str, set[str]] = {}
        for r in results:
            by_path.setdefault(r.store_path, set()).add(r.nar_hash)
        if any(len(hashes) != 1 for hashes in by_path.values()):
            raise ControlError(
                "the builders published different results for the same path (a bug: please report)"
            )
        for sp in by_path:  # in the order published: dependencies first
            size = next(r.nar_size for r in results if r.store_path == sp)
            self.say(f"{len(builders)} builders published and signed {sp} ({size:,} bytes of NAR)")
        if rel.store is None:
            # A plain tree gets its store path from its contents: that is the one to fetch.
            rel.root = rel.files = next(iter(by_path))

    def _fetch(self, client: LocalNode, sp: str, label: str) -> None:
        req = api.FetchRequest(sp, closure=True)
        t = time.monotonic()
        reply = netcmd.fetch_with_progress(
            str(client.data_dir), req, f"client fetching ({label})", "asking peers for claims"
        )
        result = reply.as_json()
        took = time.monotonic() - t
        signers = sorted({s for p in reply.fetched for s in p.signers})
        verdict = f"trusted: {len(signers)} of {BUILDERS} signed (policy needs {THRESHOLD})"
        self.say(f"quorum verdict for {sp}: {verdict}\n         signed by {', '.join(signers)}")
        logical = result["bytes_done"] + result["deduplicated_bytes"]
        saved = result["diff_logical_bytes"] - result["diff_received_bytes"]
        fetched = result["received_bytes"] + result["metadata_bytes"]
        self.say(
            f"fetched {logical / 1e6:,.1f} MB of chunks with {fetched / 1e6:,.2f} MB on the wire from "
            f"{len(result['per_peer'])} peers in {took:.1f} s"
        )
        self.rows.append(
            (
                label,
                sp.rsplit("-", 1)[-1],
                f"{logical:,}",
                f"{fetched:,}",
                f"{result['deduplicated_bytes']:,}",
                f"{saved:,}",
                str(len(result["per_peer"])),
                f"{took:.1f} s",
                f"{len(signers)}/{BUILDERS} (≥{THRESHOLD})",
            )
        )

    def _mount_and_read(self, client: LocalNode, rel: Release) -> None:
        sp = rel.files
        where = self.root / "mnt" / Path(sp).name
        where.mkdir(parents=True)
        t = time.monotonic()
        got = _call(
            str(client.data_dir),
            api.MountRequest(sp, str(where)),
        )
        how = {
            "fanotify": "lazily: fanotify pre-content events over a file-backed EROFS image",
            "cachefiles": "lazily: EROFS over fscache/cachefiles on-demand",
            "materialize": "by writing the tree out (lazy mounts need root and a capable kernel: "
            "see `ferry doctor`)",
        }.get(got.backend, got.backend)
        self.say(f"mounted {sp} on {where} in {time.monotonic() - t:.2f} s, {how}")
        inside = (
            where / rel.tree.relative_to(Path(rel.store) / sp.lstrip("/")) if rel.store else where
        )
        read = 0
        names = [n for n in READ_BACK if (rel.tree / n).is_file()] or [
            str(p.relative_to(rel.tree))
            for p in sorted(rel.tree.rglob("*"))
            if p.is_file() and not p.is_symlink()
        ][:5]
        for n in names:
            data = (inside / n).read_bytes()
            if data != (rel.tree / n).read_bytes():
                raise ControlError(
                    f"{inside / n} differs from {rel.tree / n} (a bug: please report)"
                )
            read += len(data)
        self.say(
            f"read {len(names)} files back ({read:,} bytes): identical to what the builders built"
        )
        _call(str(client.data_dir), api.UmountRequest(str(where)))

    def _table(self) -> None:
        ui.out.print()
        ui.table(
            (
                "step",
                "version",
                "logical B",
                "fetched B",
                "deduplicated B",
                "saved by diffs B",
                "peers",
                "time",
                "quorum",
            ),
            self.rows,
        )
        ui.out.print(f"\ndone in {time.monotonic() - self.t0:.1f} s", markup=False)


def _new_version(tree: Path) -> int:
    """Make `tree` the next version: some modules edited, one added (what a point release
    of a library looks like to the chunks)."""
    files = sorted(p for p in tree.rglob("*.py") if p.is_file() and not p.is_symlink())
    changed = 0
    for p in files[::25]:
        text = p.read_bytes()
        cut = len(text) // 2
        p.write_bytes(text[:cut] + b"\n# changed in demo 1.1\n" + text[cut:])
        changed += 1
    (tree / "ferry_demo_news.py").write_text('"""New in 1.1."""\nVERSION = "1.1"\n')
    return changed + 1


def _size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def _call(data_dir: str, req: api.Request) -> Any:
    return trio.run(control.call, data_dir, req)


def _print_keep(net: LocalNet, summary: dict[str, Any]) -> None:
    client: LocalNode = summary["client"]
    key = (client.data_dir / "cache.pub").read_text().strip()
    url = client.gateway_url
    latest = summary["root"]
    pids = " ".join(str(n.proc.pid) for n in net.nodes)
    ui.out.print(
        f"\nthe network keeps running; its files are in {net.root}\n"
        f"  client's Nix binary cache: {url}   (signed by {key.split(':')[0]})\n"
        f"  fetch with nix into a scratch store:\n"
        f"    nix-store --store {net.root}/from-gateway -r {latest} \\\n"
        f"      --option substituters {url} --option trusted-public-keys '{key}'\n"
        f"  or in nix.conf:  extra-substituters = {url}\n"
        f"                   extra-trusted-public-keys = {key}\n"
        f"  talk to the client: ferry status --data-dir {client.data_dir}\n"
        f"  stop it:  kill {pids}; rm -rf {net.root}",
        markup=False,
        soft_wrap=True,
    )
