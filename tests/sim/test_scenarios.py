"""The simulator's scenarios at small N: ferry's fetch, exchange and trust code in virtual
time. Every honest fetcher completes, nothing corrupt is stored, nothing is trusted
without a quorum of the trusted builders, and a seed gives the same result twice."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from sim.scenarios import Params, run, summary

# Small and quick: 24 MB on the links in 4 MiB chunks, 3 store paths.
SMALL = Params(nodes=6, closure_mb=24, paths=3, scale=1024, degree=3, stagger=2)


def _fetchers(r):
    return [n for n in r.nodes if n.role == "fetcher"]


def _honest_paths(r) -> set[str]:
    seed = {tuple(n.paths_trusted) for n in _fetchers(r) if n.paths_trusted}
    assert len(seed) == 1, "fetchers disagree on what they trusted"
    return set(next(iter(seed)))


def test_a_flash_crowd_completes_and_the_fetchers_serve_each_other() -> None:
    r = run("flash-crowd", SMALL)
    s = summary(r)
    assert (
        s["completed"] == SMALL.nodes
        and s["bad_blocks_stored"] == 0
        and s["bad_blocks_received"] == 0
    )
    assert len(_honest_paths(r)) == SMALL.paths
    # The seed sent fewer copies than there are fetchers: they traded among themselves.
    assert s["seed_egress_closures"] < SMALL.nodes - 1
    assert sum(n.bytes_up for n in _fetchers(r)) > r.closure_bytes
    assert r.baseline is not None and r.baseline["server_egress_closures"] == SMALL.nodes


def test_the_same_seed_gives_the_same_json_and_another_seed_does_not() -> None:
    def result(seed: int) -> str:
        return json.dumps(
            run("flash-crowd", dataclasses.replace(SMALL, nodes=4, seed=seed)).as_json(),
            sort_keys=True,
        )

    first = result(3)
    assert result(3) == first
    assert result(4) != first


def test_churn_still_completes() -> None:
    p = dataclasses.replace(SMALL, churn=6.0, downtime=10.0)  # each node drops off about every 10 s
    r = run("churn", p)
    s = summary(r)
    assert s["completed"] == p.nodes and s["bad_blocks_stored"] == 0


def test_byzantine_peers_are_caught_and_nothing_corrupt_is_stored() -> None:
    p = dataclasses.replace(SMALL, bad_fraction=1.0)
    r = run("byzantine-peers", p)
    s = summary(r)
    assert s["completed"] == p.nodes
    assert s["bad_blocks_stored"] == 0
    assert (
        s["bad_blocks_received"] > 0
    )  # corrupt and truncated blocks were seen and their senders banned
    assert len(_honest_paths(r)) == p.paths


def test_a_lying_builder_and_sybils_never_make_a_quorum() -> None:
    p = dataclasses.replace(SMALL, sybils=12, liar="consistent")
    r = run("byzantine-builders", p)
    s = summary(r)
    assert s["completed"] == p.nodes and s["bad_blocks_stored"] == 0
    honest = {n.paths_trusted[0] for n in _fetchers(r)}
    assert len(honest) == 1  # every fetcher trusted the two honest builders' result
    # Under `refuse`, a trusted builder signing another result stops everyone instead.
    r = run("byzantine-builders", dataclasses.replace(p, on_conflict="refuse"))
    assert all(not n.completed and not n.paths_trusted for n in _fetchers(r))
    assert all("conflict" in (n.error or "").lower() for n in _fetchers(r))


def test_a_builder_that_tells_two_stories_is_caught_by_every_fetcher_and_loses_its_veto() -> None:
    """Half the fetchers are handed one branch of the liar's log, half another: passing on
    what they are told, all catch it within a second of simulated time, and under
    `refuse` the caught key no longer blocks the honest builders' result."""
    p = dataclasses.replace(SMALL, sybils=12, on_conflict="refuse")
    r = run("byzantine-builders", p)
    (note,) = [n for n in r.notes if "tells two stories" in n]
    assert f"{p.nodes} of {p.nodes} caught it" in note, note
    last = float(note.split("the last ")[1].split(" s")[0])
    assert last < 1.0, note
    assert summary(r)["completed"] == p.nodes
    assert len({n.paths_trusted[0] for n in _fetchers(r)}) == 1


def test_a_fleet_update_travels_as_diffs() -> None:
    r = run("fleet-update", SMALL)
    s = summary(r)
    assert s["completed"] == SMALL.nodes and s["bad_blocks_stored"] == 0
    # The fleet holds the old generation: each node downloads a small part of the closure.
    assert max(n.bytes_down for n in _fetchers(r)) < r.closure_bytes / 4


def test_ferry_sim_run_writes_the_json_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from node.cli import main; main()",
            "sim",
            "run",
            "flash-crowd",
            "--nodes",
            "3",
            "--closure-mb",
            "12",
            "--paths",
            "2",
            "--scale",
            "1024",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "result.json").read_text())
    assert data["summary"]["completed"] == 3
    assert {n["role"] for n in data["nodes"]} == {"seed", "fetcher"}
    assert "| completion p95 |" in (out / "report.md").read_text()
    for png in ("completion_cdf.png", "upload_by_class.png", "seed_egress.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-c", "from node.cli import main; main()", "sim", "run", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "ferry sim list" in bad.stderr and "Traceback" not in bad.stderr
