"""Running `ferry` as a user does: a separate process, exit status, stdout, stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The `ferry` command of the Python running the tests (its venv), wherever the cwd.
ARGV = [sys.executable, "-c", "from node.cli import main; main()"]


def ferry(
    *args: str,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ferry (`env` is added to the environment); fails the test if it printed a
    traceback, which is never right."""
    proc = subprocess.run(
        [*ARGV, *args],
        input=input,
        capture_output=True,
        cwd=cwd or Path(__file__).parents[1],
        timeout=300 * float(os.environ.get("FERRY_TEST_SLOWDOWN", "1")),
        env={**os.environ, **(env or {})},
    )
    out = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out
