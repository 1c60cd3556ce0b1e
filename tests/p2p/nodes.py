"""Real `ferry node run` processes on 127.0.0.1 for tests, each with its own data dir."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.cli import ARGV, ferry

# FERRY_TEST_SLOWDOWN: how many times slower than this machine the tests run (in an
# emulated VM, about 15): waits for processes scale with it.
SLOWDOWN = float(os.environ.get("FERRY_TEST_SLOWDOWN", "1"))
START_TIMEOUT = 60.0 * SLOWDOWN


class NodeProc:
    def __init__(
        self,
        root: Path,
        name: str,
        *,
        bootstrap: Sequence[str] = (),
        policy: Path | None = None,
        timeout: float = 2.0,
        env: dict[str, str] | None = None,
        config: str = "",
        listen: str = "/ip4/127.0.0.1/tcp/0",
        netns: str | None = None,
        code: Path | None = None,
        pack_ahead: bool = False,
        wrap: tuple[str, ...] = (),
    ) -> None:
        """`netns`: run the node in that network namespace (its control socket, a file,
        still answers `ferry` here). `wrap`: a command line to run it under (`nsenter
        ...`: in a mount namespace of the test's). `code`: a checkout whose ferry to run (its node and
        its CLI), for a bench comparing with an older version. `pack_ahead`: keep the
        node's default (benches); tests turn it off, since peers on loopback are never
        sent packs and xz would only take CPU (and ~90 MB while it runs) from the test."""
        self.name = name
        self.code = code or Path(__file__).parents[2]
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Tests are impatient: a silent peer is given up on after 2 s, not 10. Many nodes
        # run at once: each gateway takes a free port (see `gateway_url`).
        off = "" if pack_ahead or "pack_ahead" in config else "pack_ahead = 0\n"
        (self.data_dir / "node.toml").write_text(
            f'request_timeout = {timeout}\ngateway = "127.0.0.1:0"\n{off}{config}'
        )
        self.argv = [
            *wrap,
            *(["ip", "netns", "exec", netns] if netns else []),
            *ARGV,
            "node",
            "run",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            listen,
            "--no-mdns",
            *[x for b in bootstrap for x in ("--bootstrap", b)],
        ]
        if policy:
            self.argv += ["--policy", str(policy)]
        self.env = {**os.environ, **(env or {})}
        self.log: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._logged = threading.Condition()

    def start(self) -> NodeProc:
        # A fresh event and log per process: the reader of a killed one may still be
        # finishing, and must not mark the new one ready.
        self.log = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            self.argv,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=self.env,
            cwd=self.code,
        )
        threading.Thread(
            target=self._drain, args=(self.proc, self.log, self._ready), daemon=True
        ).start()
        return self

    def _drain(self, proc: subprocess.Popen[bytes], log: list[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        with proc.stderr:  # closed at the end of output, not left to the collector
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                with self._logged:
                    log.append(line)
                    self._logged.notify_all()
                if " running on " in line:
                    ready.set()
        ready.set()  # it exited: wait() returns and the caller sees why

    def wait_ready(self) -> NodeProc:
        assert self._ready.wait(START_TIMEOUT), f"{self.name} did not start:\n" + "\n".join(
            self.log
        )
        assert self.proc is not None and self.proc.poll() is None, (
            f"{self.name} exited:\n" + "\n".join(self.log)
        )
        return self

    def wait_log(self, text: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Wait until `count` log lines contain `text` (the node logs each step it
        takes); returns them, or fails the test with the log."""
        with self._logged:
            found = self._logged.wait_for(
                lambda: len([x for x in self.log if text in x]) >= count, timeout
            )
            assert found, f"{self.name} never logged {text!r} x{count}:\n" + "\n".join(self.log)
            return [x for x in self.log if text in x]

    @property
    def gateway_url(self) -> str:
        return (self.data_dir / "gateway.url").read_text().strip()

    @property
    def addr(self) -> str:
        return (self.data_dir / "node.addr").read_text().splitlines()[0]

    @property
    def peer_id(self) -> str:
        return self.addr.rsplit("/p2p/", 1)[1]

    def ferry(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cwd", self.code)
        return ferry(*args, "--data-dir", str(self.data_dir), **kw)

    def json(self, *args: str) -> Any:
        r = self.ferry(*args, "--json")
        assert r.returncode == 0, f"{self.name}: ferry {' '.join(args)}: {r.stderr}\n" + "\n".join(
            self.log[-30:]
        )
        return json.loads(r.stdout)

    def wait_packed(self, timeout: float = 3600.0) -> None:
        """Until the node has packed ahead all it published (`ferry status`: packing 0).
        For benches, which must not measure a builder still packing."""
        deadline = time.monotonic() + timeout
        while self.json("status").get("packing", 0):  # older nodes (a baseline) do not pack
            assert time.monotonic() < deadline, f"{self.name} still packing after {timeout:.0f} s"
            time.sleep(0.5)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30 * SLOWDOWN)

    def stop(self) -> int | None:
        """SIGTERM and wait: a clean stop exits 0 and removes the socket and node.addr."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30 * SLOWDOWN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode


class Swarm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProc] = []

    def start(self, *names: str, **kw: Any) -> list[NodeProc]:
        """Starts the nodes at once (each process takes a second to import libp2p)."""
        new = [NodeProc(self.root, n, **kw).start() for n in names]
        self.nodes += new
        return [n.wait_ready() for n in new]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def keys(tmp: Path, *names: str) -> dict[str, tuple[Path, str]]:
    """name -> (secret key file, public key text), made by `ferry trust keygen`."""
    out = {}
    for n in names:
        r = ferry("trust", "keygen", n, "-o", str(tmp / n))
        assert r.returncode == 0, r.stderr
        out[n] = (tmp / f"{n}.secret", (tmp / f"{n}.public").read_text().strip())
    return out


def policy(
    tmp: Path, publics: list[str], threshold: int, on_conflict: str = "refuse", name: str = "policy"
) -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(
        f'trusted = {json.dumps(publics)}\nthreshold = {threshold}\non_conflict = "{on_conflict}"\n'
    )
    return p


def rot_chunk(node: NodeProc, digest: bytes | None = None) -> None:
    """Flip a byte of one chunk in the node's slab (of `digest`, else of its largest), as
    disk rot would: the node then refuses to serve it."""
    db = sqlite3.connect(node.data_dir / "index.sqlite")
    try:
        where, args = (
            ("WHERE c.digest = ?", (digest,))
            if digest
            else ("ORDER BY c.length DESC, c.digest", ())
        )
        slab, offset = db.execute(
            f"SELECT s.name, c.offset FROM chunks c JOIN slabs s ON s.id = c.slab {where} LIMIT 1",
            args,
        ).fetchone()
    finally:
        db.close()
    with open(node.data_dir / "slabs" / slab, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
