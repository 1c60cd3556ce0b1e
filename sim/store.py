"""A simulated node's store: the in-memory store, with chunks scaled down (see
sim.content): frames stand for the bytes full-size chunks would take on the links."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.exchange.memory import MemoryStore
from node.exchange.packing import RunHints
from p2p.blocks import REPLY_TARGET, Block, BlockServer, Reply


class LinkBytes(bytes):
    """A reply frame that stands for more bytes on the links than it holds (scaled
    chunks): `sim.link` charges `link_bytes`."""

    link_bytes: int

    def __new__(cls, data: bytes, link_bytes: int) -> LinkBytes:
        self = super().__new__(cls, data)
        self.link_bytes = link_bytes
        return self

    def __getitem__(self, key: Any) -> Any:
        # A piece of a frame (a paced write) stands for its share of the link bytes.
        part = super().__getitem__(key)
        if not isinstance(key, slice) or not self:
            return part
        return LinkBytes(part, self.link_bytes * len(part) // len(self))


@dataclass
class SimStore(MemoryStore):
    scale: int = 1  # link bytes per byte of chunk data

    async def encode_reply(self, replies: list[Reply], hints: RunHints) -> bytes:
        # Frames of REPLY_TARGET bytes on the links, as the real node sends them.
        frame = BlockServer.reply(
            replies,
            bases=hints.bases,
            have=hints.have,
            group=hints.groups,
            diff_level=self.diff_level,
            target=max(1, REPLY_TARGET // self.scale),
        )
        if self.scale == 1:
            return frame
        # Chunk payload is scaled on the links, framing and manifests are not: the
        # payload is the frame less about 48 bytes of framing per entry.
        blobs = sum(
            len(r.data) for r in replies if isinstance(r, Block) and r.digest not in self.chunks
        )
        payload = max(0, len(frame) - 48 * len(replies) - blobs)
        return LinkBytes(frame, len(frame) + (self.scale - 1) * payload)
