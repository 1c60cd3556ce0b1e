"""How logged claims and proofs of equivocation travel between nodes (the formats are
trust.logged and trust.equivocation; node.daemon.witness runs them):

    gossip topic ferry/logged/1   a msgpack array of logged claims
    gossip topic ferry/caught/1   one proof of equivocation
    /ferry/logged/1               a stream of frames (p2p.frame), each a logged claim,
                                  at most MAX_PUSHED: a builder handing out what it signed
    /ferry/caught/1               a stream of frames, each a proof, at most MAX_PROOFS_TOLD
                                  of at most MAX_PROOF bytes: told to each peer that connects
"""

from __future__ import annotations

LOGGED_TOPIC = "ferry/logged/1"
CAUGHT_TOPIC = "ferry/caught/1"
PUSH_PROTOCOL = "/ferry/logged/1"
PROOFS_PROTOCOL = "/ferry/caught/1"
MAX_PUSHED = 256
MAX_PROOFS_TOLD = 64
MAX_PROOF = 1 << 20  # a CLAIMS proof holds two logged claims; real ones are a few KiB
DEADLINE = 30.0  # for a push or a telling to arrive whole
MAX_CHECKS = 256  # logs waiting to have their heads shown consistent
MAX_ASKED = 8  # peers asked for one consistency proof; proofs asked for one log at once
ASK_DEADLINE = 10.0  # for one peer's answer
CHECKS_AT_ONCE = 4  # logs whose heads are being asked about at once
