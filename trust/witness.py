"""What a node has seen of its builders' logs, and the lies it caught (sans-io).

Fed every logged claim (trust.logged), bare head and bare claim the node receives, from
any peer, it keeps for each builder key the first leaf it saw at each index, the head it
saw at each size, and the first claim it saw for each store path. Something that
contradicts one of those is a lie it can prove (trust.equivocation): two leaves at one
index (LEAVES), two roots at one size (FORK), two outcomes for one path (CLAIMS). The
proof is kept, handed to peers, and the key counts for nothing from then on
(`QuorumPolicy.caught`). A proof from a peer is checked before it is
believed: it names the key it convicts, whoever sent it.
"""

from __future__ import annotations

from dataclasses import dataclass

from trust import equivocation
from trust.claim import SignedClaim
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


class Witness:
    def __init__(self) -> None:
        self.newest: dict[bytes, SignedTreeHead] = {}  # key -> its largest head seen
        self._heads: dict[tuple[bytes, int], SignedTreeHead] = {}  # (key, size) -> head
        self._leaves: dict[tuple[bytes, int], LoggedClaim] = {}  # (key, index) -> first seen
        self._claims: dict[tuple[bytes, str], SignedClaim] = {}  # (key, path) -> first seen
        self.caught: dict[bytes, Caught] = {}  # raw key -> the proof against it

    def keys_caught(self) -> frozenset[bytes]:
        return frozenset(self.caught)

    def observe(self, logged: LoggedClaim) -> Caught | None:
        """A logged claim that passed `check`; a new catch if it exposes a lie."""
        catch = self.observe_head(logged.head)
        if catch is not None:
            return catch
        prior = self._leaves.setdefault((logged.head.builder.key, logged.index), logged)
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
        return self.observe_claim(logged.claim)

    def observe_head(self, head: SignedTreeHead) -> Caught | None:
        """A head whose signature verifies."""
        key = head.builder.key
        same = self._heads.setdefault((key, head.head.size), head)
        if same.head.root != head.head.root:
            return self._catch(Fork(same, head))
        newest = self.newest.get(key)
        if newest is None or head.head.size > newest.head.size:
            self.newest[key] = head
        return None

    def observe_claim(self, claim: SignedClaim) -> Caught | None:
        """A claim whose signature verifies."""
        prior = self._claims.setdefault((claim.builder.key, str(claim.claim.store_path)), claim)
        if prior.claim.outcome != claim.claim.outcome:
            return self._catch(Claims(prior, claim))
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
