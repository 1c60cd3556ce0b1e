"""A policy change without a restart: SIGHUP and `ferry node reload` read the settings
and the trust policy again; a bad one is refused and the old one kept; `doctor` says
what the node runs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.p2p.nodes import Swarm, keys, policy

pytestmark = pytest.mark.slow(seconds=20)

SP = "/nix/store/" + "1" * 32 + "-reloaded-1.0"


def doctor_check(node, name: str) -> dict:
    r = node.ferry("doctor", "--json")
    return next(c for c in json.loads(r.stdout)["checks"] if c["name"] == name)


def test_a_new_trusted_key_counts_after_sighup_and_a_bad_policy_is_refused(
    swarm: Swarm, tmp_path: Path
) -> None:
    k = keys(tmp_path, "builder-a", "builder-b")
    (builder,) = swarm.start("builder")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("hello")
    builder.json("publish", str(tree), "--store-path", SP, "--key", str(k["builder-b"][0]))
    pol = policy(tmp_path, [k["builder-a"][1]], threshold=1)
    (client,) = swarm.start("client", bootstrap=[builder.addr], policy=pol)
    r = client.ferry("fetch", SP)
    assert r.returncode == 3, r.stderr  # builder-b is not trusted yet
    assert doctor_check(client, "running policy")["level"] == "ok"

    pol.write_text(
        pol.read_text().replace(
            f'"{k["builder-a"][1]}"', f'"{k["builder-a"][1]}", "{k["builder-b"][1]}"'
        )
    )
    check = doctor_check(client, "running policy")
    assert check["level"] == "warn" and "not what the file now says" in check["detail"]
    assert client.proc is not None
    client.proc.send_signal(signal.SIGHUP)
    client.wait_log("reloaded: policy")
    assert doctor_check(client, "running policy")["level"] == "ok"
    fetched = client.json("fetch", SP)
    assert fetched["fetched"][0]["signers"] == ["builder-b"]
    assert client.json("status")["policy_in_use"]["threshold"] == 1

    # A broken policy: refused with the reason, the running one kept.
    good = pol.read_text()
    pol.write_text("threshold = \n")
    r = client.ferry("node", "reload")
    assert r.returncode == 1
    assert "not reloaded, the node keeps its settings and policy" in r.stderr
    assert str(pol) in r.stderr
    assert len(client.json("status")["policy_in_use"]["trusted"]) == 2
    # A setting that needs a restart is named as such.
    pol.write_text(good)
    config = client.data_dir / "node.toml"
    config.write_text(config.read_text() + 'priority = 10\nmax_store_size = "1G"\n')
    reloaded = client.json("node", "reload")
    assert reloaded["restart_needed"] == ["priority"]
    assert reloaded["changed"] == ["max_store_size"]
