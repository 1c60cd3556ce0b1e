"""The project's own Nix configuration wins over everything on the host: /etc/nix (Debian's
compiled-in `build-users-group = nixbld`), ~/.config/nix, NIX_CONFIG and NIX_REMOTE."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from store import nixconf
from tests.conftest import Nix


def test_nix_reads_only_the_projects_configuration(tmp_path: Path, nix: Nix) -> None:
    home = tmp_path / "home"
    (home / ".config" / "nix").mkdir(parents=True)
    (home / ".config" / "nix" / "nix.conf").write_text(
        "substituters = https://cache.example.invalid\nbuild-users-group = nixbld\nsandbox = false\n"
    )
    # A host as it might be (the test session's own environment is hermetic already).
    host = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NIX_")},
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "NIX_CONFIG": "narinfo-cache-negative-ttl = 3600",
        "NIX_REMOTE": "daemon",
    }
    env = nixconf.environ(tmp_path / "ours", host)
    assert not {"NIX_CONFIG", "NIX_REMOTE"} & set(env)
    shown = json.loads(
        subprocess.run(
            ["nix", "show-config", "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    value = {
        name: shown[name]["value"]
        for name in (
            "substituters",
            "build-users-group",
            "sandbox",
            "narinfo-cache-negative-ttl",
            "sandbox-paths",
        )
    }
    assert value["substituters"] == [] and value["build-users-group"] == nixconf.build_users_group()
    assert value["sandbox"] is True and value["narinfo-cache-negative-ttl"] == 0
    assert "/bin" in value["sandbox-paths"] and "/lib64?" in value["sandbox-paths"]
    # The same host settings, unfiltered, do reach Nix: the test would see them.
    leaky = json.loads(
        subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", "show-config", "--json"],
            env=host,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert leaky["substituters"]["value"] == ["https://cache.example.invalid"]
    assert leaky["narinfo-cache-negative-ttl"]["value"] == 3600
