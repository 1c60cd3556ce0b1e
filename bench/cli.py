"""How long a `ferry` command takes to start, next to a bare interpreter in the same run.

    .venv/bin/python bench/cli.py [--rounds 15]

  python -c pass   the floor: this interpreter starting and exiting
  --version        the parser alone
  --help           the parser and every subcommand's help
  status           a command answered by a running node over its control socket
A post-build hook or a script that runs `ferry` per store path pays this every time.
Rounds interleave the commands (this machine is noisy); the median of each is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cli import ARGV
from tests.p2p.nodes import NodeProc


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-cli-") as tmp:
        node = NodeProc(Path(tmp), "node").start().wait_ready()
        try:
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "ferry --version": [*ARGV, "--version"],
                "ferry --help": [*ARGV, "--help"],
                "ferry status": [*ARGV, "status", "--data-dir", str(node.data_dir)],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.rounds):
                for name, argv in commands.items():
                    t = time.perf_counter()
                    subprocess.run(argv, check=True, capture_output=True)
                    times[name].append(time.perf_counter() - t)
        finally:
            node.stop()
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':<18} {'median s':>9} {'over python -c pass':>20}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<18} {m:9.3f} {m - floor:20.3f}")


if __name__ == "__main__":
    main()
