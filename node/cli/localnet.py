"""A few `ferry node run` processes on 127.0.0.1, each with its own data directory under
one root, for `ferry demo`: started together, stopped together, nothing left behind.

Children run in their own session (a terminal's Ctrl-C reaches only the demo, which then
stops them in order: the client first, so it unmounts while its peers still answer) and,
unless they are to outlive the demo, with a parent-death signal, so even a demo killed
with SIGKILL takes its nodes with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ARGV = [sys.executable, "-c", "from node.cli import main; main()"]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1


class LocalNetError(Exception):
    """A node of the local network did not start; the message has its log's end."""


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the demo's own cleanup still stops them


@dataclass
class LocalNode:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def addr(self) -> str:
        return (self.data_dir / "node.addr").read_text().splitlines()[0]

    @property
    def gateway_url(self) -> str | None:
        p = self.data_dir / "gateway.url"
        return p.read_text().strip() if p.exists() else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalNet:
    root: Path
    outlive: bool = False  # --keep: the nodes keep running after the demo exits
    env: dict[str, str] | None = None  # the nodes' environment (None: this process's)
    nodes: list[LocalNode] = field(default_factory=list)

    def start(self, name: str, *, config: str = "", args: tuple[str, ...] = ()) -> LocalNode:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "node.toml").write_text(config)
        log = data_dir / "node.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    *ARGV,
                    "node",
                    "run",
                    "--data-dir",
                    str(data_dir),
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--no-mdns",
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=self.env,
                preexec_fn=None if self.outlive else _die_with_parent,
            )
        node = LocalNode(name, data_dir, proc, log)
        self.nodes.append(node)
        return node

    def wait_ready(self, node: LocalNode) -> None:
        """Until the node listens (it writes node.addr), or LocalNetError."""
        deadline = time.monotonic() + START_TIMEOUT
        while not (node.data_dir / "node.addr").exists():
            if node.proc.poll() is not None:
                raise LocalNetError(
                    f"node {node.name} exited with status {node.proc.returncode}:\n{node.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LocalNetError(
                    f"node {node.name} did not start within {START_TIMEOUT:.0f} s:\n{node.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM each node, newest first (the client unmounts while its peers run),
        then SIGKILL any that do not stop in time."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
                try:
                    node.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(STOP_TIMEOUT)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].encode().decode("unicode_escape")
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def detach(point: str) -> None:
    """Lazily unmount `point` (MNT_DETACH): the last resort before removing a tree."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(os.fsencode(point), 2)
