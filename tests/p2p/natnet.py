"""A small internet in network namespaces, for tests of nodes behind NAT (root).

    public segment  198.51.100.0/24, a bridge in namespace `public`:
                    the public node at 198.51.100.1 (its namespace is `public` itself)
    home segment i  10.<i>.0.0/24 behind router i, whose WAN address is 198.51.100.<10 i>;
                    the home node at 10.<i>.0.2, the router's LAN side at 10.<i>.0.1

Each router masquerades what leaves its WAN (nftables): an endpoint-independent mapping,
as most home routers make, unless `symmetric` (a new random port per connection, which
no hole punch gets through). Home segments have no route to each other: a home node
reaches the other only through a mapping its router made. Addresses exist only inside
these namespaces; everything is removed on exit, whatever happened.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from dataclasses import dataclass, field

PUBLIC_NET = "198.51.100"
PUBLIC_ADDR = f"{PUBLIC_NET}.1"

_serial = itertools.count()


class NatNetError(RuntimeError):
    """A command that builds the topology failed; the message has its output."""


def _run(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode:
        raise NatNetError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")


@dataclass
class Home:
    index: int
    ns: str  # the home node's namespace
    router: str  # the router's namespace
    addr: str  # the home node's address (private)
    wan: str  # the router's public address: what the public side sees

    def nft_counters(self) -> str:
        """The router's NAT table, with its rules' counters."""
        return subprocess.run(
            ["ip", "netns", "exec", self.router, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
        ).stdout

    def inbound_bytes(self) -> dict[str, int]:
        """Bytes the router forwarded into the home: {"from-public": n, "from-elsewhere": m}."""
        out = {}
        for line in self.nft_counters().splitlines():
            m = re.search(r'counter packets \d+ bytes (\d+) comment "([a-z-]+)"', line)
            if m:
                out[m.group(2)] = int(m.group(1))
        return out


@dataclass
class NatNet:
    homes: int = 2
    symmetric: frozenset[int] = frozenset()  # indexes (1-based) of routers with symmetric NAT
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{next(_serial)}")
    public: str = ""
    home: list[Home] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    def __enter__(self) -> NatNet:
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # Deleting a namespace deletes the veths and bridge in it (and their peers).
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()

    def _ns(self, name: str) -> str:
        ns = f"fnat{self.tag}-{name}"
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        self._in(ns, "ip", "link", "set", "lo", "up")
        return ns

    @staticmethod
    def _in(ns: str, *argv: str) -> None:
        _run("ip", "netns", "exec", ns, *argv)

    def _veth(self, a_ns: str, a: str, b_ns: str, b: str) -> None:
        # Made in the first namespace, its peer moved into the second: names never meet
        # the host's own interfaces.
        self._in(a_ns, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self._in(a_ns, "ip", "link", "set", b, "netns", b_ns)
        self._in(a_ns, "ip", "link", "set", a, "up")
        self._in(b_ns, "ip", "link", "set", b, "up")

    def _build(self) -> None:
        self.public = self._ns("pub")
        self._in(self.public, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.public, "ip", "addr", "add", f"{PUBLIC_ADDR}/24", "dev", "br0")
        self._in(self.public, "ip", "link", "set", "br0", "up")
        for i in range(1, self.homes + 1):
            router, home = self._ns(f"r{i}"), self._ns(f"h{i}")
            wan, lan = f"{PUBLIC_NET}.{10 * i}", f"10.{i}.0"
            # Router's WAN on the public bridge.
            self._veth(self.public, f"pub{i}", router, "wan")
            self._in(self.public, "ip", "link", "set", f"pub{i}", "master", "br0")
            self._in(router, "ip", "addr", "add", f"{wan}/24", "dev", "wan")
            # Router's LAN to the home node.
            self._veth(router, "lan", home, "eth0")
            self._in(router, "ip", "addr", "add", f"{lan}.1/24", "dev", "lan")
            self._in(home, "ip", "addr", "add", f"{lan}.2/24", "dev", "eth0")
            self._in(home, "ip", "route", "add", "default", "via", f"{lan}.1")
            self._in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            how = "masquerade random" if i in self.symmetric else "masquerade"
            rules = (
                "table ip nat {\n"
                " chain postrouting {\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                f'  oifname "wan" counter {how}\n'
                " }\n"
                "}\n"
                # As a home router does: what arrives on the WAN unasked is dropped, not
                # refused (a refusal would end a hole punch whose other half is on its way).
                "table ip filter {\n"
                " chain input {\n"
                "  type filter hook input priority filter; policy accept;\n"
                '  iifname "wan" ct state new counter drop\n'
                " }\n"
                # What reaches the home from the public node, and from anywhere else (the
                # other home, through a punched hole): which way the bytes came.
                " chain forward {\n"
                "  type filter hook forward priority filter; policy accept;\n"
                f'  iifname "wan" ip saddr {PUBLIC_ADDR} counter comment "from-public"\n'
                f'  iifname "wan" ip saddr != {PUBLIC_ADDR} counter comment "from-elsewhere"\n'
                " }\n"
                "}\n"
            )
            subprocess.run(
                ["ip", "netns", "exec", router, "nft", "-f", "-"],
                input=rules,
                text=True,
                check=True,
                capture_output=True,
            )
            self.home.append(Home(i, home, router, f"{lan}.2", wan))
