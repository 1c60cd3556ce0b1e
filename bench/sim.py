"""Flash crowd at N = 10, 100, 1000 in the simulator, next to a central server.

    PYTHONHASHSEED=0 .venv/bin/python bench/sim.py [--nodes 10,100,1000] [--closure-mb 500] [--wall-limit 600]

Home-like links (100 Mbit/s down, 20 Mbit/s up, 20-80 ms RTT, 0.1% loss), one seed with
the same link, a closure of --closure-mb. Each N runs in a child process with a wall-time
limit (--wall-limit seconds); a run over the limit is reported as such, not left out.
Prints per N: p50/p95/max completion time and seed egress, the central-server baseline
(a fluid model of one server with the seed's uplink, see sim.scenarios), wall time and
peak memory (RSS), then the targets: p95 at the largest N within 3x of
the smallest N, and seed egress at most 3 closures at every N. Writes seed_egress_vs_n.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = """
import dataclasses, json, sys
from sim.scenarios import Params, run, summary
p = Params(**json.loads(sys.argv[1]))
r = run("flash-crowd", p)
print(json.dumps({"summary": summary(r), "baseline": r.baseline, "wall": r.wall_seconds,
                  "memory_mb": r.peak_memory_mb, "virtual": r.virtual_seconds}))
"""


def one(n: int, args: argparse.Namespace) -> dict:
    params = {
        "nodes": n,
        "closure_mb": args.closure_mb,
        "paths": args.paths,
        "scale": args.scale,
        "seed": args.seed,
    }
    t = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(params)],
            capture_output=True,
            text=True,
            timeout=args.wall_limit,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            cwd=Path(__file__).resolve().parents[1],
        )
    except subprocess.TimeoutExpired:
        return {"nodes": n, "over_limit": True, "wall": time.monotonic() - t}
    if proc.returncode:
        sys.exit(f"N={n} failed:\n{proc.stderr[-3000:]}")
    return {"nodes": n, "over_limit": False, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--nodes",
        default="10,100,1000",
        help="fetcher counts, comma-separated (default %(default)s)",
    )
    ap.add_argument("--closure-mb", type=float, default=500.0)
    ap.add_argument("--paths", type=int, default=5)
    ap.add_argument(
        "--scale",
        type=int,
        default=1024,
        help="link bytes per real chunk byte (1024: 4 MiB chunks)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--wall-limit", type=float, default=600.0, help="seconds a run may take (default 600)"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/sim"))
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.nodes.split(",")]:
        print(f"N={n}...", file=sys.stderr, flush=True)
        rows.append(one(n, args))
    print(
        f"flash crowd, {args.closure_mb:.0f} MB closure ({args.paths} paths, chunks of "
        f"{4096 * args.scale / (1 << 20):g} MiB on the links), home links, seed {args.seed}"
    )
    print(
        f"{'N':>6} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'seed egress':>12} | {'central p95 s':>13} | "
        f"{'wall s':>7} {'mem MB':>7}"
    )
    for r in rows:
        if r["over_limit"]:
            print(f"{r['nodes']:>6}  did not finish within {args.wall_limit:.0f} s of wall time")
            continue
        s, b = r["summary"], r["baseline"]
        print(
            f"{r['nodes']:>6} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['max']:>8.1f} {s['seed_egress_closures']:>11.2f}x"
            f" | {b['p95'] if b else float('nan'):>13.1f} | {r['wall']:>7.1f} {r['memory_mb']:>7.0f}"
            + (
                ""
                if s["completed"] == s["fetchers"]
                else f"  ({s['completed']}/{s['fetchers']} completed)"
            )
        )
    done = [r for r in rows if not r["over_limit"]]
    print("targets:")
    if len(done) == len(rows) and len(rows) > 1:
        ratio = rows[-1]["summary"]["p95"] / rows[0]["summary"]["p95"]
        print(
            f"  {'PASS' if ratio <= 3 else 'FAIL'}  p95 at N={rows[-1]['nodes']} / N={rows[0]['nodes']}: "
            f"{ratio:.2f} (target <= 3)"
        )
    else:
        print("  FAIL  p95 ratio: not every N finished")
    worst = max((r["summary"]["seed_egress_closures"] for r in done), default=float("inf"))
    print(
        f"  {'PASS' if worst <= 3 else 'FAIL'}  seed egress at most {worst:.2f} closures (target <= 3)"
    )
    big = rows[-1]
    print(
        f"  {'PASS' if not big['over_limit'] and big['wall'] <= 600 else 'FAIL'}  N={big['nodes']} wall time "
        f"{big['wall']:.0f} s (target <= 600)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flash_crowd.json").write_text(json.dumps(rows, indent=1) + "\n")
    if done:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            [r["nodes"] for r in done],
            [r["summary"]["seed_egress_closures"] for r in done],
            marker="o",
            label="ferry seed",
        )
        ax.plot(
            [r["nodes"] for r in done],
            [r["nodes"] for r in done],
            linestyle="--",
            color="grey",
            label="central server",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (fetchers)")
        ax.set_ylabel("egress (closures)")
        ax.set_title("Flash crowd: seed egress vs N")
        ax.legend()
        fig.tight_layout()
        with tempfile.NamedTemporaryFile(dir=args.out, suffix=".png", delete=False) as f:
            fig.savefig(f.name, dpi=110)
        os.replace(f.name, args.out / "seed_egress_vs_n.png")
        print(f"wrote {args.out}/flash_crowd.json, seed_egress_vs_n.png")


if __name__ == "__main__":
    main()
