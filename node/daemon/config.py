"""The node's settings: a TOML file (`<data-dir>/node.toml` if present, or `--config`),
overridden by `ferry node run` flags. Every setting, its default and its meaning:"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from typing import Any

import multiaddr

from node.exchange import limits as peerlimits
from node.exchange.limits import PeerLimits
from store import nixcli, userfile
from store.userfile import UserFileError

DEFAULT_PORT = 4737
DEFAULT_GATEWAY = "127.0.0.1:4738"

# name -> (help text); the order is the order `--help` and the README list them in.
SETTINGS: dict[str, str] = {
    "listen": f'multiaddrs to listen on (default ["/ip4/0.0.0.0/tcp/{DEFAULT_PORT}"])',
    "bootstrap": "multiaddrs (with /p2p/<peer id>) of peers to connect to at start and keep connected (default [])",
    "policy": "the trust policy file (TOML: trusted keys, threshold); needed to fetch, not to serve (default none)",
    "mdns": "find peers on the local network with mDNS (default true)",
    "dht": "announce and look up holders of store paths in the Kademlia DHT (default true)",
    "gossip": "announce new claims with gossipsub and listen for others' (default true)",
    "max_connections": "most libp2p connections the node keeps (default 64)",
    "ban_seconds": "how long a peer that sent bad data is shunned (default 600)",
    "request_timeout": "seconds before an unanswered request goes to another peer (default 10)",
    "relay": 'relay circuits for peers behind NAT: "auto" (when peers find this node dialable), "on" or '
    '"off"; the [limits] relay_* values bound what it carries (default "auto")',
    "claims_timeout": "seconds a peer has to answer which builders signed a path before a fetch decides "
    "without it; a peer that stays silent is asked last, then dropped (default 5)",
    "gateway": f'HOST:PORT of the Nix binary-cache endpoint, or "off" (default "{DEFAULT_GATEWAY}"; port 0 picks '
    "a free one; the URL is written to <data-dir>/gateway.url)",
    "gateway_public": "allow the gateway on a non-loopback address (default false: it serves anything the "
    "policy trusts to whoever connects)",
    "store_dir": 'the Nix store directory the gateway serves (default "/nix/store")',
    "priority": "the gateway's priority in nix-cache-info; lower wins (default 30, ahead of cache.nixos.org's 40)",
    "narinfo_timeout": "seconds a narinfo request may spend asking peers before it answers 404 (default 10)",
    "diffs": "ask peers for missing chunks as zstd diffs against the closest older version held locally "
    "(default true; false sends plain chunks, which costs bandwidth and saves the peers' CPU)",
    "diff_level": "the strongest zstd level for chunks sent as diffs against a requester's older version; "
    "each reply uses the level that gets it to the peer soonest, measured (default 19; 1-19)",
    "upload_slots": "peers sent blocks at once; others are answered BUSY and ask elsewhere first (default 8)",
    "read_deadline": "seconds a read of a lazy mount waits for its chunks before it fails with EIO (default 30)",
    "gateway_key": "the Nix secret key the gateway signs narinfos with (default <data-dir>/cache.key, made on "
    "first start; its public half is in <data-dir>/cache.pub)",
    "nix_store": 'the Nix store this node publishes from, as Nix\'s --store: "" for the system store, a '
    'directory (a chroot store) or "local?root=DIR" (default "")',
    "watch_store": "publish every path Nix registers in nix_store from now on, as it appears, references "
    "first; resumes where it stopped after a restart (default false)",
    "max_store_size": 'most bytes of chunks the store keeps, e.g. "20G": past it, the node evicts the least '
    "recently used paths no GC root needs (what the gateway fetched for Nix is such a cache) (default 0: no cap)",
    "pack_ahead": 'most bytes of disk for runs of published paths compressed ahead with xz, e.g. "4G": a client '
    "fetching such a path over a slow link gets them, about nar.xz's size, at no CPU to the node "
    '(default "2G"; 0: compress each reply as it is sent)',
    "publish_key": "the builder secret key (`ferry trust keygen`) that signs what the node publishes by "
    "itself: watched paths and `ferry post-build-hook` outputs (default none: unsigned)",
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
    claims_timeout: float = 5.0
    relay: str = "auto"
    gateway: str = DEFAULT_GATEWAY
    gateway_public: bool = False
    store_dir: str = "/nix/store"
    priority: int = 30
    narinfo_timeout: float = 10.0
    read_deadline: float = 30.0
    diffs: bool = True
    diff_level: int = 19
    upload_slots: int = 8
    gateway_key: str | None = None
    nix_store: str = ""
    watch_store: bool = False
    publish_key: str | None = None
    max_store_size: int = 0
    pack_ahead: int = 2 << 30
    limits: PeerLimits = peerlimits.DEFAULT  # the [limits] table
    source: str = field(default="defaults", compare=False)
    # Settings given as command-line flags: an error in one names the flag, not the file.
    flags: frozenset[str] = field(default=frozenset(), compare=False)

    def _where(self, name: str) -> str:
        if name not in self.flags:
            return f"{self.source}: {name}"
        flag = "--" + name.replace("_", "-")
        # bootstrap adds the flags' addresses to the file's: either may hold the bad one.
        return (
            flag
            if name != "bootstrap" or self.source == "defaults"
            else (f"{flag} (or bootstrap in {self.source})")
        )

    def __post_init__(self) -> None:
        for name in ("listen", "bootstrap"):
            for a in getattr(self, name):
                try:
                    multiaddr.Multiaddr(a)
                except Exception as e:  # noqa: BLE001 - the multiaddr library raises assorted types
                    raise ConfigError(
                        f"{self._where(name)}: {a!r} is not a multiaddr ({e})"
                    ) from None
        for a in self.bootstrap:
            if "/p2p/" not in a:
                raise ConfigError(
                    f"{self._where('bootstrap')}: {a!r} lacks /p2p/<peer id> "
                    "(copy the line from the peer's node.addr)"
                )
        if not self.listen:
            raise ConfigError(f"{self._where('listen')}: give at least one multiaddr")
        if self.relay not in ("auto", "on", "off"):
            raise ConfigError(f'{self._where("relay")}: must be "auto", "on" or "off"')
        if not 1 <= self.max_connections <= 10_000:
            raise ConfigError(f"{self.source}: max_connections must be from 1 to 10000")
        for name in (
            "ban_seconds",
            "request_timeout",
            "claims_timeout",
            "narinfo_timeout",
            "read_deadline",
        ):
            if not 0 < getattr(self, name) <= 86_400:
                raise ConfigError(f"{self.source}: {name} must be a number of seconds above 0")
        if self.gateway != "off":
            host, _ = self.gateway_bind  # checks the form
            if not self.gateway_public and not _loopback(host):
                raise ConfigError(
                    f"{self._where('gateway')}: {self.gateway} is not a loopback address; the gateway "
                    "hands out every path the policy trusts, so it listens on 127.0.0.1 unless "
                    "you also set gateway_public (--gateway-public)"
                )
        if not (
            self.store_dir.startswith("/")
            and len(self.store_dir) > 1
            and not self.store_dir.endswith("/")
        ):
            raise ConfigError(
                f"{self.source}: store_dir: {self.store_dir!r} must be an absolute path like /nix/store"
            )
        if not 1 <= self.diff_level <= 19:
            raise ConfigError(f"{self.source}: diff_level must be a zstd level from 1 to 19")
        if not 1 <= self.upload_slots <= 1000:
            raise ConfigError(f"{self.source}: upload_slots must be from 1 to 1000")
        try:
            nixcli.store_root(self.nix_store)
        except nixcli.NixError as e:
            raise ConfigError(f"{self._where('nix_store')}: {e}") from None
        if not -1000 <= self.priority <= 1000:
            raise ConfigError(f"{self.source}: priority must be a whole number (Nix uses 0-100)")

    @property
    def gateway_bind(self) -> tuple[str, int]:
        """(host, port) of `gateway`; ConfigError if it is not HOST:PORT."""
        host, sep, port = self.gateway.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f"{self._where('gateway')}: {self.gateway!r} is not HOST:PORT (e.g. 127.0.0.1:4738) "
                'or "off"'
            )
        return host, int(port)

    def with_overrides(self, **changes: Any) -> NodeConfig:
        """These settings as command-line flags override (None: not given)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given, flags=self.flags | frozenset(given))


_TYPES: dict[str, tuple[type, ...]] = {
    "listen": (list,),
    "bootstrap": (list,),
    "policy": (str,),
    "mdns": (bool,),
    "dht": (bool,),
    "gossip": (bool,),
    "max_connections": (int,),
    "ban_seconds": (int, float),
    "request_timeout": (int, float),
    "claims_timeout": (int, float),
    "relay": (str,),
    "gateway": (str,),
    "gateway_public": (bool,),
    "store_dir": (str,),
    "priority": (int,),
    "narinfo_timeout": (int, float),
    "read_deadline": (int, float),
    "diffs": (bool,),
    "diff_level": (int,),
    "upload_slots": (int,),
    "gateway_key": (str,),
    "nix_store": (str,),
    "watch_store": (bool,),
    "publish_key": (str,),
    "max_store_size": (int, str),
    "pack_ahead": (int, str),
}


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


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
        if key == "limits":
            values[key] = _limits(value, source)
            continue
        if key not in SETTINGS:
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {', '.join(SETTINGS)})")
        types = _TYPES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ConfigError(f"{source}: {key} must be {' or '.join(t.__name__ for t in types)}")
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: {key} must be a list of multiaddr strings")
            value = tuple(value)
        if key in ("max_store_size", "pack_ahead"):
            value = parse_size(value, f"{source}: {key}")
        values[key] = value
    return NodeConfig(**values, source=source)


def _limits(table: object, source: str) -> PeerLimits:
    known = peerlimits.meanings()
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: limits must be a table ([limits])")
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: limits.{key}"
        if key not in known:
            raise ConfigError(f"{source}: unknown limit {key!r} (known: {', '.join(known)})")
        if key in peerlimits.sizes() and isinstance(value, str):
            value = parse_size(value, where)
        wanted = (int,) if key in peerlimits.integers() else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ConfigError(
                f"{where} must be {'a whole number' if wanted == (int,) else 'a number'}"
            )
        values[key] = value
    try:
        return PeerLimits(**values)
    except ValueError as e:
        raise ConfigError(f"{source}: limits: {e}") from None


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str, where: str) -> int:
    """Bytes from 1073741824, "1G", "512M" or "1.5T" (binary units; a trailing "B" or
    "iB" is allowed)."""
    if isinstance(value, int):
        n: float = value
    else:
        text = value.strip().upper().removesuffix("IB").removesuffix("B").strip()
        unit = text[-1:] if text[-1:] in _UNITS else ""
        try:
            n = float(text[: len(text) - len(unit)]) * _UNITS[unit]
        except ValueError:
            raise ConfigError(
                f"{where}: {value!r} is not a size (bytes, or a number with K, M, G or T)"
            ) from None
    if n < 0:
        raise ConfigError(f"{where}: a size cannot be negative")
    return int(n)


def describe() -> str:
    """The settings for `--help` and the README."""
    return "\n".join(f"  {k:<16} {v}" for k, v in SETTINGS.items())


def toml_value(value: object) -> str:
    """A default as TOML (for the commented config file and the reference)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def defaults() -> dict[str, object]:
    """Every setting's default (None: not set), in SETTINGS order."""
    fields = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
    return {name: fields[name] for name in SETTINGS}


def commented(overrides: dict[str, object] | None = None) -> str:
    """A node.toml with every setting: those in `overrides` set, the rest commented out
    at their defaults, each under its help text."""
    lines = [
        "# ferry node settings (`ferry node run --help` and docs/configuration.md explain each).",
        "# A commented-out line shows the default; uncomment it to change the setting.",
        "",
    ]
    for name, default in defaults().items():
        lines.append(f"# {SETTINGS[name]}")
        if overrides and name in overrides:
            lines.append(f"{name} = {toml_value(overrides[name])}")
        elif default is None:
            lines.append(f"# {name} = ...")
        else:
            lines.append(f"# {name} = {toml_value(default)}")
        lines.append("")
    lines += ["# Per-peer limits (docs/configuration.md explains each):", "# [limits]"]
    for name, default in dataclasses.asdict(PeerLimits()).items():
        lines.append(f"# {name} = {toml_value(default)}")
    lines.append("")
    return "\n".join(lines)
