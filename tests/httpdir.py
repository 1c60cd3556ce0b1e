"""A real HTTP server (Python's http.server, in its own process) serving a directory on
127.0.0.1, for handing Nix a binary cache in tests."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_READY = re.compile(rb"port (\d+)")


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Yields the base URL; the server picks a free port and says which on stdout."""
    with serve_process(directory) as (url, _pid):
        yield url


@contextmanager
def serve_process(directory: Path) -> Iterator[tuple[str, int]]:
    """`serve`, yielding the server's process id beside its URL (benches count its CPU)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the socket is bound and listening
        m = _READY.search(line)
        if not m:
            raise RuntimeError(f"http.server did not start: {line!r}")
        yield f"http://127.0.0.1:{m.group(1).decode()}", proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
