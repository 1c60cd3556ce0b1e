"""`ferry init` and `ferry doctor` as a user meets them: files made once and kept, every
failed check naming its fix, exit status 1 only when something cannot work."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.cli import ferry


def _checks(data_dir: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict]]:
    r = ferry("doctor", "--json", "--data-dir", str(data_dir), env=env)
    got = json.loads(r.stdout)
    worst = {"ok": 0, "warn": 1, "fail": 2}
    by_name: dict[str, dict] = {}  # per name, the worst (several ports are checked)
    for c in got["checks"]:
        if c["name"] not in by_name or worst[c["level"]] > worst[by_name[c["name"]]["level"]]:
            by_name[c["name"]] = c
    return r.returncode, by_name


def test_init_makes_the_files_once_and_prints_the_nix_lines(tmp_path: Path) -> None:
    d = tmp_path / "node"
    code, checks = _checks(d)
    assert (
        code == 0
        and checks["data directory"]["level"] == "warn"
        and "ferry init" in checks["data directory"]["fix"]
    )
    r = ferry("init", "--data-dir", str(d))
    assert r.returncode == 0, r.stderr
    pub = (d / "cache.pub").read_text().strip()
    assert (
        f"extra-trusted-public-keys = {pub}" in r.stdout
        and "extra-substituters = http://127.0.0.1:4738" in r.stdout
    )
    # The file a multi-user daemon reads, and why a user's own file may not do.
    assert "add to /etc/nix/nix.conf, then restart nix-daemon" in r.stdout
    assert "works only without a daemon, or for a user in the daemon's trusted-users" in r.stdout
    assert pub.startswith("ferry-") and pub.split(":")[0] != "ferry-" + socket.gethostname() + "-1"
    assert (d / "identity.key").stat().st_mode & 0o777 == 0o600 and (
        d / "cache.key"
    ).stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    config = (d / "node.toml").read_text()
    assert "# upload_slots = 8" in config and "# request_timeout = 10.0" in config
    (d / "node.toml").write_text(config + "\nmax_connections = 7\n")
    again = ferry("init", "--data-dir", str(d))
    assert again.returncode == 0 and "kept" in again.stdout
    assert (d / "cache.pub").read_text().strip() == pub and "max_connections = 7" in (
        d / "node.toml"
    ).read_text()
    _, checks = _checks(d)
    assert checks["node files"]["level"] == "ok" and checks["settings"]["level"] == "ok"


def test_init_refuses_a_bad_policy_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text("threshold = 2\n")
    r = ferry("init", "--data-dir", str(tmp_path / "n"), "--policy", str(bad))
    assert r.returncode == 1 and "trusted" in r.stderr and not (tmp_path / "n").exists()


def test_doctor_fails_a_busy_port_and_an_unreachable_peer_and_says_how_to_fix_them(
    tmp_path: Path,
) -> None:
    d = tmp_path / "node"
    d.mkdir()
    with socket.socket() as busy, socket.socket() as closed:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        peer = "12D3KooWJVzD1JPSEcbwULHJfDiy54APeoSJ7sNNW2KazYhDbwkk"
        (d / "node.toml").write_text(
            f'listen = ["/ip4/127.0.0.1/tcp/{busy.getsockname()[1]}"]\n'
            f'bootstrap = ["/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}/p2p/{peer}"]\n'
            f'policy = "{tmp_path / "missing.toml"}"\ngateway = "127.0.0.1:0"\n'
        )
        code, checks = _checks(d)
    assert code == 1
    assert checks["port"]["level"] == "fail" and "choose another port" in checks["port"]["fix"]
    assert checks["peers"]["level"] == "fail" and "node.addr" in checks["peers"]["fix"]
    assert checks["trust policy"]["level"] == "fail" and checks["trust policy"]["fix"]
    text = ferry("doctor", "--data-dir", str(d))
    assert text.returncode == 1 and text.stdout.count("fix:") >= 3


def test_doctor_checks_that_nix_uses_the_node(tmp_path: Path, nix) -> None:
    d = tmp_path / "node"
    assert ferry("init", "--data-dir", str(d)).returncode == 0
    conf = tmp_path / "nixconf"
    conf.mkdir()
    env = {"NIX_CONF_DIR": str(conf), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    (conf / "nix.conf").write_text("")
    _, checks = _checks(d, env)
    assert (
        checks["nix.conf"]["level"] == "warn"
        and "extra-substituters = http://127.0.0.1:4738" in checks["nix.conf"]["fix"]
    )
    pub = (d / "cache.pub").read_text().strip()
    (conf / "nix.conf").write_text(
        f"extra-substituters = http://127.0.0.1:4738\nextra-trusted-public-keys = {pub}\n"
    )
    _, checks = _checks(d, env)
    assert checks["nix.conf"]["level"] == "ok", checks["nix.conf"]


def test_a_debian_user_without_a_lazy_backend_is_told_what_to_install() -> None:
    from node.cli.doctor import _distro_advice

    bookworm = _distro_advice({"ID": "debian", "VERSION_CODENAME": "bookworm"})
    assert "upgrade to Debian 13" in bookworm and "trixie-backports" in bookworm
    trixie = _distro_advice({"ID": "debian", "VERSION_CODENAME": "trixie"})
    assert trixie.startswith("On Debian: install the backports kernel")
    assert "CONFIG_CACHEFILES_ONDEMAND=y" in trixie and "without --lazy" in trixie
    assert _distro_advice({"ID": "fedora"}) == ""
