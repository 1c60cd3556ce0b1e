"""The network as a fetch session sees it: the node's discovery provides it, and the
simulator its own."""

from __future__ import annotations

from typing import Protocol

from node.exchange.peers import PeerBook
from p2p.stream import ByteStream


class Network(Protocol):
    """What a session needs of the node (the simulator provides its own)."""

    book: PeerBook  # what the node remembers of its peers (who answers, who is banned)

    def peers(self) -> list[str]: ...
    def claim_holders(self, path_hash: str) -> list[str]:
        """The connected peers worth asking for this path's claims."""
        ...

    async def open_stream(self, peer: str, protocol: str) -> ByteStream: ...
    async def providers(self, path_hash: str) -> list[str]: ...
    async def punish(self, peer: str, problem: str) -> None: ...
    async def strike(self, peer: str, problem: str) -> None:
        """A lesser offence (a request left unanswered); the last strike bans the peer."""
        ...
