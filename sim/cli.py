"""`ferry sim list` and `ferry sim run`: the network simulator (package `sim/`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from node.cli import Commands, ui
from sim.params import SCENARIOS, Params

PARAMS = (
    "closure_mb",
    "paths",
    "scale",
    "degree",
    "stagger",
    "churn",
    "downtime",
    "bad_fraction",
    "sybils",
    "on_conflict",
    "liar",
    "deadline",
)


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "sim",
        description="Run ferry's own fetch sessions, block and claim protocols, quorum decisions and chunk "
        "verification for many simulated nodes in one process, over modelled links in virtual time. "
        "The same seed gives the same result.",
    )
    simsub = p.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    lp = simsub.add_parser(
        "list",
        help="name the scenarios and their parameters",
        description="The scenarios `ferry sim run` knows, each with the parameters it uses "
        "and their defaults.",
    )
    lp.set_defaults(run=_list)
    rp = simsub.add_parser(
        "run",
        help="run a scenario",
        description="Run SCENARIO and write DIR/result.json (per node: completed, completion time, bytes up and "
        "down, bad blocks received and stored, paths trusted), DIR/report.md (a table) and PNG plots: "
        "completion time CDF, bytes uploaded per node class, seed egress against nodes served.",
    )
    rp.add_argument("scenario", metavar="SCENARIO", help="one of: " + ", ".join(SCENARIOS))
    rp.add_argument(
        "--nodes", type=int, default=20, metavar="N", help="fetching nodes (default 20)"
    )
    rp.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    rp.add_argument(
        "--out",
        default="sim-out",
        metavar="DIR",
        help="where to write the results (default sim-out)",
    )
    defaults = Params()
    for name in PARAMS:
        default = getattr(defaults, name)
        rp.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=type(default),
            default=None,
            metavar=name.upper(),
            help=f"{Params.HELP[name]} (default {default})",
        )
    rp.set_defaults(run=_run)


def _list(args: argparse.Namespace) -> None:
    defaults = Params()
    for name, (what, used) in SCENARIOS.items():
        ui.out.print(f"[bold]{name}[/bold]: {what}")
        for param in dict.fromkeys(("nodes", "seed", *used)):
            flag = f"--{param.replace('_', '-')}"
            ui.out.print(
                f"    {flag:<16} {Params.HELP[param]} (default {getattr(defaults, param)})",
                markup=False,
                soft_wrap=True,
            )


def _run(args: argparse.Namespace) -> None:
    # Sets of peer names are iterated in hash order: the same order every run needs a
    # fixed hash seed, so re-run under one before importing anything that hashes.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(
            sys.executable,
            [sys.executable, "-c", "from node.cli import main; main()", *sys.argv[1:]],
        )
    from sim import report
    from sim.scenarios import run

    if args.scenario not in SCENARIOS:
        ui.fail(
            f"no scenario {args.scenario!r}; `ferry sim list` names them: {', '.join(SCENARIOS)}", 2
        )
    changes = {k: getattr(args, k) for k in PARAMS if getattr(args, k) is not None}
    try:
        params = dataclasses.replace(Params(nodes=args.nodes, seed=args.seed), **changes)
        _check(params)
    except ValueError as e:
        ui.fail(str(e), 2)
    with ui.err.status(f"simulating {args.scenario} with {params.nodes} nodes..."):
        result = run(args.scenario, params)
    files = report.write(result, Path(args.out))
    ui.out.print(report.markdown(result), markup=False, soft_wrap=True)
    ui.out.print("wrote " + ", ".join(str(f) for f in files), markup=False, soft_wrap=True)


def _check(p: Params) -> None:
    if not 1 <= p.nodes <= 100_000:
        raise ValueError("--nodes must be from 1 to 100000")
    if not 1 <= p.paths <= 10_000 or p.closure_mb <= 0:
        raise ValueError("--paths must be from 1 to 10000 and --closure-mb above 0")
    if p.scale < 1 or p.scale & (p.scale - 1):
        raise ValueError("--scale must be a power of two")
    if p.closure_mb * 1e6 / p.scale < 4096 * p.paths:
        raise ValueError(
            "--closure-mb is too small for --paths at this --scale (each path needs a chunk)"
        )
    if (
        not 0 <= p.bad_fraction <= 10
        or p.churn < 0
        or p.downtime < 5
        or p.degree < 0
        or p.sybils < 0
    ):
        raise ValueError(
            "--bad-fraction 0-10, --churn >= 0, --downtime >= 5, --degree >= 0, --sybils >= 0"
        )
    if p.on_conflict not in ("majority", "refuse"):
        raise ValueError("--on-conflict is majority or refuse")
    if p.liar not in ("equivocates", "consistent"):
        raise ValueError("--liar is equivocates or consistent")
    if p.deadline <= 0 or p.stagger < 0:
        raise ValueError("--deadline must be above 0 and --stagger at least 0")
