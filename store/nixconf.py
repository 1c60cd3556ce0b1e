"""The Nix configuration ferry owns for the Nix commands it runs itself (the demo, the
tests' fixtures, the benches), so that nothing on the host changes what they do: not
`/etc/nix/nix.conf`, not `~/.config/nix`, not `NIX_*` variables, not `/etc/group`.

Why each setting is here:
- `build-users-group =`: Debian's nix-bin is built with `nixbld` as the default and
  creates no such group, so every build fails on a fresh machine. Without a daemon no
  build users are needed: builds run as the calling user, in a sandbox in a user
  namespace. Where the kernel refuses user namespaces (to any process in a chroot), a
  sandbox needs build users: as root, `./run` then makes the group `ferry-nixbld`, and
  builds run as its members.
- `substituters =`: nothing is downloaded unless a command names a substituter.
- `extra-sandbox-paths`: the scratch derivations ferry builds run the host's `/bin/sh`
  and coreutils; a `?` suffix lets a path be absent (no /lib64 on some systems).
- `narinfo-cache-negative-ttl = 0`: Nix otherwise remembers a 404 for an hour, and a
  gateway on a reused port would look empty.
- `fsync-metadata = false`: scratch stores are thrown away; syncing them costs time.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Mapping
from pathlib import Path

SANDBOX_PATHS = ("/bin", "/usr", "/lib", "/lib64?", "/lib32?", "/libx32?")

BUILD_GROUP = "ferry-nixbld"  # made by ./run where needed (see above)

# Besides `build-users-group`, which depends on who runs Nix (see `build_users_group`).
SETTINGS: dict[str, str] = {
    "substituters": "",
    "trusted-substituters": "",
    "require-sigs": "true",
    "sandbox": "true",
    "sandbox-fallback": "true",
    "extra-sandbox-paths": " ".join(SANDBOX_PATHS),
    "experimental-features": "nix-command",
    "narinfo-cache-negative-ttl": "0",
    "fsync-metadata": "false",
    "warn-dirty": "false",
}

CONF = "nix.conf"


def build_users_group() -> str:
    """`BUILD_GROUP` for root where it exists with members, else none."""
    if os.geteuid() != 0:
        return ""
    try:
        return BUILD_GROUP if grp.getgrnam(BUILD_GROUP).gr_mem else ""
    except KeyError:
        return ""


def render() -> str:
    settings = {"build-users-group": build_users_group(), **SETTINGS}
    return "".join(f"{k} = {v}\n" for k, v in settings.items())


def environ(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with every `NIX_*` variable removed
    and Nix pointed at a configuration of ours in `home/nix` and caches in `home/cache`.
    Writes the configuration file (again, if it is there: it is ours)."""
    conf_dir = home / "nix"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / CONF).write_text(render())
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("NIX_")
    }
    env.update(
        {
            "NIX_CONF_DIR": str(conf_dir),
            "NIX_USER_CONF_FILES": "",  # set but empty: no ~/.config/nix/nix.conf, no XDG_CONFIG_DIRS
            "XDG_CACHE_HOME": str(home / "cache"),
        }
    )
    return env
