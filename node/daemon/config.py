"""The node's settings: a TOML file (`<data-dir>/node.toml` if present, or `--config`),
overridden by `ferry node run` flags. Every setting, its default and its meaning:"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any

import multiaddr

from store import userfile
from store.userfile import UserFileError

DEFAULT_PORT = 4737

# name -> (help text); the order is the order `--help` and the README list them in.
SETTINGS: dict[str, str] = {
    "listen": f"multiaddrs to listen on (default [\"/ip4/0.0.0.0/tcp/{DEFAULT_PORT}\"])",
    "bootstrap": "multiaddrs (with /p2p/<peer id>) of peers to connect to at start and keep connected (default [])",
    "policy": "the trust policy file (TOML: trusted keys, threshold); needed to fetch, not to serve (default none)",
    "mdns": "find peers on the local network with mDNS (default true)",
    "dht": "announce and look up holders of store paths in the Kademlia DHT (default true)",
    "gossip": "announce new claims with gossipsub and listen for others' (default true)",
    "max_connections": "most libp2p connections the node keeps (default 64)",
    "ban_seconds": "how long a peer that sent bad data is shunned (default 600)",
    "request_timeout": "seconds before an unanswered request goes to another peer (default 10)",
}


class ConfigError(ValueError):
    """A node setting that cannot be used; the message names the file and setting."""


@dataclass(frozen=True)
class NodeConfig:
    listen: tuple[str, ...] = (f"/ip4/0.0.0.0/tcp/{DEFAULT_PORT}",)
    bootstrap: tuple[str, ...] = ()
    policy: str | None = None
    mdns: bool = True
    dht: bool = True
    gossip: bool = True
    max_connections: int = 64
    ban_seconds: float = 600.0
    request_timeout: float = 10.0
    source: str = field(default="defaults", compare=False)

    def __post_init__(self) -> None:
        for name in ("listen", "bootstrap"):
            for a in getattr(self, name):
                try:
                    multiaddr.Multiaddr(a)
                except Exception as e:  # the multiaddr library raises assorted types
                    raise ConfigError(f"{self.source}: {name}: {a!r} is not a multiaddr ({e})") from None
        for a in self.bootstrap:
            if "/p2p/" not in a:
                raise ConfigError(f"{self.source}: bootstrap: {a!r} lacks /p2p/<peer id> "
                                  "(copy the line from the peer's node.addr)")
        if not self.listen:
            raise ConfigError(f"{self.source}: listen: give at least one multiaddr")
        if not 1 <= self.max_connections <= 10_000:
            raise ConfigError(f"{self.source}: max_connections must be from 1 to 10000")
        for name in ("ban_seconds", "request_timeout"):
            if not 0 < getattr(self, name) <= 86_400:
                raise ConfigError(f"{self.source}: {name} must be a number of seconds above 0")

    def with_overrides(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_TYPES: dict[str, tuple[type, ...]] = {
    "listen": (list,), "bootstrap": (list,), "policy": (str,), "mdns": (bool,), "dht": (bool,),
    "gossip": (bool,), "max_connections": (int,), "ban_seconds": (int, float), "request_timeout": (int, float),
}


def load(path: str) -> NodeConfig:
    try:
        text = userfile.read(path, 1 << 20, "a node config file").decode("utf-8", "replace")
    except UserFileError as e:
        raise ConfigError(str(e)) from None
    return parse(text, path)


def parse(text: str, source: str) -> NodeConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in SETTINGS:
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {', '.join(SETTINGS)})")
        types = _TYPES[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"{source}: {key} must be {' or '.join(t.__name__ for t in types)}")
        if types == (list,):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: {key} must be a list of multiaddr strings")
            value = tuple(value)
        values[key] = value
    return NodeConfig(**values, source=source)


def describe() -> str:
    """The settings for `--help` and the README."""
    return "\n".join(f"  {k:<16} {v}" for k, v in SETTINGS.items())
