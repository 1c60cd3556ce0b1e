"""node.toml: every setting parsed, every mistake named with its file and setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.daemon.config import ConfigError, NodeConfig, parse
from tests.cli import ferry


def test_defaults_and_a_full_file() -> None:
    assert NodeConfig().gateway_bind == ("127.0.0.1", 4738)
    c = parse(
        'gateway = "[::1]:0"\npriority = 10\nstore_dir = "/gnu/store"\nnarinfo_timeout = 2.5\n'
        "request_timeout = 3\nmdns = false\n",
        "node.toml",
    )
    assert c.gateway_bind == ("::1", 0) and c.priority == 10 and c.store_dir == "/gnu/store"
    assert c.narinfo_timeout == 2.5 and c.mdns is False
    assert parse('gateway = "off"\n', "node.toml").gateway == "off"


@pytest.mark.parametrize(
    "text, words",
    [
        ('gateway = "0.0.0.0:4738"\n', ["node.toml", "not a loopback address", "gateway_public"]),
        ('gateway = "example.org:80"\n', ["not a loopback address"]),
        ('gateway = "4738"\n', ["not HOST:PORT"]),
        ('gateway = "127.0.0.1:70000"\n', ["not HOST:PORT"]),
        ('store_dir = "nix/store"\n', ["store_dir", "absolute"]),
        ("narinfo_timeout = 0\n", ["narinfo_timeout", "above 0"]),
        ("read_deadline = -1\n", ["read_deadline", "above 0"]),
        ('priority = "high"\n', ["priority must be int"]),
        ('gatway = "127.0.0.1:1"\n', ["unknown setting 'gatway'"]),
        ('gateway_public = "yes"\n', ["gateway_public must be bool"]),
        ("gateway = [\n", ["not valid TOML"]),
        ("limits = 3\n", ["limits must be a table"]),
        (
            "[limits]\nstream_per_peer = 3\n",
            ["unknown limit 'stream_per_peer'", "streams_per_peer"],
        ),
        ("[limits]\nstrikes = 2.5\n", ["limits.strikes must be a whole number"]),
        ("[limits]\nslot_stall = 0\n", ["slot_stall must be a number above 0"]),
        ("[limits]\nslot_stall = 30\n", ["slot_stall must be shorter than send_stall"]),
        ('[limits]\nreply_bytes = "lots"\n', ["limits.reply_bytes", "not a size"]),
    ],
)
def test_mistakes_are_named(text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "node.toml")
    for w in words:
        assert w in str(e.value)


def test_limits_are_read_from_their_table() -> None:
    c = parse('[limits]\nreply_bytes = "16M"\nstrikes = 5\n', "node.toml")
    assert c.limits.reply_bytes == 16 << 20 and c.limits.strikes == 5
    assert c.limits.send_stall == 20.0  # the others keep their defaults


def test_a_public_gateway_needs_saying_so() -> None:
    c = parse('gateway = "0.0.0.0:4738"\ngateway_public = true\n', "node.toml")
    assert c.gateway_bind == ("0.0.0.0", 4738)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--gateway", "nonsense"], ["ferry: error: --gateway: 'nonsense' is not HOST:PORT"]),
        (["--gateway", "10.1.1.1:80"], ["--gateway: 10.1.1.1:80 is not a loopback"]),
        (["--listen", "foo"], ["--listen: 'foo' is not a multiaddr"]),
    ],
)
def test_a_flags_mistake_names_the_flag_not_the_file(
    tmp_path: Path, flags: list[str], words: list[str]
) -> None:
    (tmp_path / "node.toml").write_text("priority = 20\n")  # a good file, which is not to blame
    r = ferry("node", "run", "--data-dir", str(tmp_path), *flags)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "node.toml" not in r.stderr
    for w in words:
        assert w in r.stderr
    (tmp_path / "bad.toml").write_text('gateway = "nonsense"\n')
    r = ferry("node", "run", "--data-dir", str(tmp_path), "--config", str(tmp_path / "bad.toml"))
    assert r.returncode == 1 and f"{tmp_path / 'bad.toml'}: gateway: 'nonsense'" in r.stderr
