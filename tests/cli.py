"""Running `ferry` as a user does: a separate process, exit status, stdout, stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ferry(*args: str, input: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ferry; fails the test if it printed a traceback, which is never right."""
    proc = subprocess.run(
        [sys.executable, "-c", "from node.cli import main; main()", *args],
        input=input, capture_output=True, cwd=cwd or Path(__file__).parents[1], timeout=300,
    )
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert "Traceback" not in out.stderr, out.stderr
    return out
