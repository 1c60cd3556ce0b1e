"""Real Nix substituting a closure through the ferry gateway, next to a plain binary cache.

    .venv/bin/python bench/gateway.py [--source /usr/bin] [--extra /usr/lib/python3.11] [--rounds 2]

Nix 2.8 builds a three-path closure in a chroot store (`bin` copies --source, `lib`
copies --extra, `top` refers to both), at least 200 MB. Then, in interleaved rounds,
`nix-store --realise` fills a fresh chroot store from:
  ferry     the gateway of a fresh client node (empty store, policy 1-of-1) whose only
            peer is a seed node that published the closure: every byte crosses libp2p
  http+xz   `nix copy --to file://...?compression=xz` served by `python -m http.server`
            (the usual self-hosted cache; compressing it is set-up, not timed)
Both on 127.0.0.1 of this machine, in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import nixconf
from tests.conftest import NIX_MK
from tests.httpdir import serve
from tests.p2p.nodes import NodeProc, keys, policy

NIX_EXPR = (
    """
{ source, extra }:
let"""
    + NIX_MK
    + """
  bin = mk "bench-bin-1.0" "mkdir $out; cp -r ${source}/. $out/ 2>/dev/null; chmod -R u+w $out; true";
  lib = mk "bench-lib-1.0" "mkdir $out; cp -r ${extra}/. $out/ 2>/dev/null; chmod -R u+w $out; true";
in mk "bench-top-1.0" "mkdir $out; echo ${bin} > $out/bin; echo ${lib} > $out/lib"
"""
)


def nix(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:3])}... failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def du(path: Path) -> int:
    return int(
        subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0]
    )


def realise(env: dict[str, str], dest: Path, top: str, url: str, key: str) -> float:
    t = time.perf_counter()
    nix(
        env,
        "nix-store",
        "--store",
        str(dest),
        "--realise",
        top,
        "--option",
        "substituters",
        url,
        "--option",
        "trusted-public-keys",
        key,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--source", default="/usr/bin", help="directory copied into the big path (default /usr/bin)"
    )
    ap.add_argument(
        "--extra",
        default=f"/usr/lib/python3.{sys.version_info.minor}",
        help="directory copied into the second path",
    )
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("nix-store") is None:
        sys.exit("needs Nix (Debian: nix-bin); `./run test` installs it when run as root")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-gw-") as tmp_:
        tmp = Path(tmp_)
        env = {**nixconf.environ(tmp), "HOME": str(tmp)}
        store = tmp / "store"
        (tmp / "closure.nix").write_text(NIX_EXPR)
        print("building the closure with Nix...", file=sys.stderr)
        top = nix(
            env,
            "nix-build",
            "--store",
            str(store),
            str(tmp / "closure.nix"),
            "--argstr",
            "source",
            args.source,
            "--argstr",
            "extra",
            args.extra,
            "--no-out-link",
            "--option",
            "extra-sandbox-paths",
            f"{args.source} {args.extra}",
        ).strip()
        paths = nix(env, "nix-store", "--store", str(store), "-qR", top).split()
        nar_bytes = sum(
            int(nix(env, "nix-store", "--store", str(store), "-q", "--size", p)) for p in paths
        )
        if nar_bytes < 200e6:
            print(
                f"warning: the closure is only {nar_bytes / 1e6:.0f} MB; pick a bigger --source",
                file=sys.stderr,
            )

        # The plain cache: xz NARs signed by a Nix key.
        nix(
            env,
            "nix-store",
            "--generate-binary-cache-key",
            "plain-cache",
            str(tmp / "plain.sec"),
            str(tmp / "plain.pub"),
        )
        plain_key = (tmp / "plain.pub").read_text().strip()
        nix(
            env,
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "store",
            "sign",
            "--store",
            str(store),
            "--key-file",
            str(tmp / "plain.sec"),
            "--recursive",
            top,
        )
        print("compressing the xz cache (set-up, not timed)...", file=sys.stderr)
        nix(
            env,
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--store",
            str(store),
            "--to",
            f"file://{tmp / 'xzcache'}?compression=xz",
            top,
        )
        xz_bytes = du(tmp / "xzcache" / "nar")

        k = keys(tmp, "builder")
        pol = policy(tmp, [k["builder"][1]], threshold=1)
        seed = NodeProc(tmp, "seed", timeout=10).start().wait_ready()
        procs = [seed]
        times: dict[str, list[float]] = {"ferry": [], "http+xz": []}
        try:
            for p in paths:
                seed.json("publish", p, "--store", str(store), "--key", str(k["builder"][0]))
            with serve(tmp / "xzcache") as plain_url:
                for r in range(args.rounds):
                    client = NodeProc(
                        tmp, f"client{r}", bootstrap=[seed.addr], policy=pol, timeout=10
                    ).start()
                    procs.append(client)
                    client.wait_ready()
                    node_key = (client.data_dir / "cache.pub").read_text().strip()
                    try:
                        times["ferry"].append(
                            realise(env, tmp / f"dest-ferry-{r}", top, client.gateway_url, node_key)
                        )
                    except SystemExit:
                        print("\n".join(client.log[-40:] + seed.log[-20:]), file=sys.stderr)
                        raise
                    client.stop()
                    times["http+xz"].append(
                        realise(env, tmp / f"dest-xz-{r}", top, plain_url, plain_key)
                    )
        finally:
            for p in procs:
                p.stop()
    print(
        f"closure: {len(paths)} paths, {nar_bytes / 1e6:.1f} MB of NAR ({args.source}, {args.extra}); "
        f"xz NARs {xz_bytes / 1e6:.1f} MB"
    )
    for label, ts in times.items():
        runs = ", ".join(f"{t:.1f}" for t in ts)
        print(
            f"  {label:<8} best {min(ts):6.1f} s  {nar_bytes / min(ts) / 1e6:6.1f} MB/s of NAR   (runs: {runs})"
        )
    print(f"  ferry / http+xz time: {min(times['ferry']) / min(times['http+xz']):.2f}")


if __name__ == "__main__":
    main()
