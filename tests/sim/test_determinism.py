"""The same seed gives a byte-identical result.json at fleet size, from two separate
`ferry sim run` processes, as a user who runs the command twice gets. (Within one
process two runs can agree by luck: objects land at the same addresses, and pytest-trio
already orders trio's scheduling.)"""

from __future__ import annotations

import difflib
import json
import subprocess
from pathlib import Path

import pytest

from tests.cli import ARGV

# Nodes per scenario: a flash crowd costs the simulator more than twice what a fleet
# update does per node (30 took 59 s in CI), and both processes run at once, so it gets a
# third of the fleet (CI's ten minutes).
NODES = {"flash-crowd": 20, "fleet-update": 60}


@pytest.mark.slow(seconds=60)
@pytest.mark.parametrize("scenario", sorted(NODES))
def test_the_same_seed_gives_a_byte_identical_result_at_fleet_size(
    scenario: str, tmp_path: Path
) -> None:
    outs = [tmp_path / name for name in ("first", "second")]
    procs = [
        subprocess.Popen(
            [
                *ARGV,
                "sim",
                "run",
                scenario,
                "--nodes",
                str(NODES[scenario]),
                "--seed",
                "7",
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    first, second = ((out / "result.json").read_text() for out in outs)
    assert json.loads(first)["summary"]["completed"] == NODES[scenario]
    diff = list(
        difflib.unified_diff(
            first.splitlines(), second.splitlines(), "first", "second", n=2, lineterm=""
        )
    )
    assert first == second, "\n".join(diff[:40])
