"""Where the store lives: `--data-dir`, else `FERRY_DATA_DIR`, else `/var/lib/ferry` for
root and `$XDG_DATA_HOME/ferry` (`~/.local/share/ferry`) for everyone else."""

from __future__ import annotations

import os

# The running node's control socket in the data directory (node/daemon/control.py).
CONTROL_SOCKET = "control.sock"


def default_data_dir() -> str:
    env = os.environ.get("FERRY_DATA_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/ferry"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "ferry")
