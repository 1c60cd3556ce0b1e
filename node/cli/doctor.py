"""`ferry doctor`: what this machine can do, and how to fix what it cannot."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from node.cli import ui
from ondemand.probe import probe


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="check what this machine supports (lazy-mount backends so far)",
        description="Check the kernel and permissions for lazy mounts: which backends (fanotify, cachefiles, "
        "materialize) can run here, what each one that cannot is missing, and which `ferry mount` will use.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    report = probe()
    if args.json:
        ui.print_json({**asdict(report), "chosen": report.chosen})
        return
    ui.out.print(f"kernel {report.kernel}, {'root' if report.root else 'not root'}", markup=False)
    for b in report.backends:
        mark = "ok " if b.usable else "no "
        ui.out.print(f"  {mark} {b.name}", markup=False)
        for m in b.missing:
            ui.out.print(f"        needs: {m}", markup=False)
    ui.out.print(f"ferry mount will use: {report.chosen}", markup=False)
