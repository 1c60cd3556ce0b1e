"""What a node has seen of its builders' logs, and the lies it caught (sans-io).

Fed every logged claim (trust.logged) the node receives, from any peer, it keeps for
each log (a builder key and a log id) the first leaf it saw at each index, the head it
saw at each size, and the first claim it saw for each store path. Something that
contradicts one of those is a lie it can prove (trust.equivocation): two leaves at one
index (LEAVES), two roots at one size (FORK), two outcomes for one path (CLAIMS). Claims
without a log prove nothing of the kind: a key used on two machines may have built a
path twice, and the policy weighs such claims path by path as it always has. The
proof is kept, handed to peers, and the key counts for nothing from then on
(`QuorumPolicy.caught`). A proof from a peer is checked before it is
believed: it names the key it convicts, whoever sent it.
"""

from __future__ import annotations

from dataclasses import dataclass

from trust import equivocation
from trust.equivocation import Claims, Equivocation, Fork, Leaves
from trust.key import PublicKey
from trust.logged import LoggedClaim
from trust.treehead import SignedTreeHead


@dataclass(frozen=True, slots=True)
class Caught:
    key: PublicKey
    proof: Equivocation
    encoded: bytes  # as it travels (trust.equivocation)

    @property
    def kind(self) -> str:
        return type(self.proof).__name__.upper()


Log = tuple[bytes, bytes]  # (builder key, log id)


class Witness:
    def __init__(self) -> None:
        self._heads: dict[tuple[Log, int], SignedTreeHead] = {}  # (log, size) -> head
        self._leaves: dict[tuple[Log, int], LoggedClaim] = {}  # (log, index) -> first seen
        self._claims: dict[tuple[Log, str], LoggedClaim] = {}  # (log, path) -> first seen
        self.caught: dict[bytes, Caught] = {}  # raw key -> the proof against it

    def keys_caught(self) -> frozenset[bytes]:
        return frozenset(self.caught)

    def heads_of(self, log: Log) -> list[SignedTreeHead]:
        """The heads seen of one log, one per size, smallest first."""
        return sorted(
            (h for (g, _), h in self._heads.items() if g == log), key=lambda h: h.head.size
        )

    def observe(self, logged: LoggedClaim) -> Caught | None:
        """A logged claim that passed `check`; a new catch if it exposes a lie."""
        catch = self.observe_head(logged.head)
        if catch is not None:
            return catch
        log = logged.head.log
        prior = self._leaves.setdefault((log, logged.index), logged)
        if prior.leaf != logged.leaf:
            return self._catch(
                Leaves(
                    prior.head,
                    logged.head,
                    logged.index,
                    prior.leaf,
                    prior.proof,
                    logged.leaf,
                    logged.proof,
                )
            )
        first = self._claims.setdefault((log, str(logged.claim.claim.store_path)), logged)
        if first.claim.claim.outcome != logged.claim.claim.outcome:
            return self._catch(Claims(first, logged))
        return None

    def observe_head(self, head: SignedTreeHead) -> Caught | None:
        """A head whose signature verifies."""
        same = self._heads.setdefault((head.log, head.head.size), head)
        if same.head.root != head.head.root:
            return self._catch(Fork(same, head))
        return None

    def receive_proof(self, data: bytes) -> Caught | None:
        """A proof from a peer: a new catch if it holds and convicts a key not yet caught.
        Raises EquivocationError if it does not hold."""
        return self._catch(equivocation.decode(data))

    def _catch(self, proof: Equivocation) -> Caught | None:
        key = proof.check()
        if key.key in self.caught:
            return None
        caught = Caught(key, proof, equivocation.encode(proof))
        self.caught[key.key] = caught
        return caught
