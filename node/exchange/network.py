"""The network as a fetch session sees it: the node's discovery provides it, and the
simulator its own."""

from __future__ import annotations

from typing import Protocol

from p2p.stream import ByteStream


class Network(Protocol):
    """What a session needs of the node (the simulator provides its own)."""

    def peers(self) -> list[str]: ...
    def claim_holders(self, path_hash: str) -> list[str]:
        """The connected peers worth asking for this path's claims."""
        ...

    async def open_stream(self, peer: str, protocol: str) -> ByteStream: ...
    async def providers(self, path_hash: str) -> list[str]: ...
    async def punish(self, peer: str, problem: str) -> None: ...
