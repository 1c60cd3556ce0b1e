"""What a node has seen of its builders' logs, and the lies it caught (sans-io).

Fed every logged claim (trust.logged) the node receives, from any peer, it keeps for
each log (a builder key and a log id) the first leaf it saw at each index, the head it
saw at each size, and the first claim it saw for each store path. Something that
contradicts one of those is a lie it can prove (trust.equivocation): two leaves at one
index (LEAVES), two roots at one size (FORK), two outcomes for one path (CLAIMS) unless
the builder revoked the earlier claim (trust.revocation) at an index between the two:
that is a builder correcting a mistake in the open, and a catch it excuses is released.
Claims
without a log prove nothing of the kind: a key used on two machines may have built a
path twice, and the policy weighs such claims path by path as it always has. The
proof is kept, handed to peers, and the key counts for nothing from then on
(`QuorumPolicy.caught`). A proof from a peer is checked before it is
believed: it names the key it convicts, whoever sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trust import equivocation, merkle
from trust.equivocation import Claims, Equivocation, EquivocationError, Fork, Leaves
from trust.key import PublicKey
from trust.logged import Logged, LoggedClaim, LoggedRevocation
from trust.revocation import claim_digest
from trust.treehead import SignedTreeHead


@dataclass(frozen=True, slots=True)
class Caught:
    key: PublicKey
    proof: Equivocation
    encoded: bytes  # as it travels (trust.equivocation)

    @property
    def kind(self) -> str:
        return type(self.proof).__name__.upper()


@dataclass(frozen=True, slots=True)
class Released:
    """A catch that a revocation seen since excuses (CLAIMS: the earlier claim was taken
    back before the other was signed)."""

    key: PublicKey


Log = tuple[bytes, bytes]  # (builder key, log id)


class Witness:
    def __init__(self) -> None:
        self._heads: dict[tuple[Log, int], SignedTreeHead] = {}  # (log, size) -> head
        self._leaves: dict[tuple[Log, int], Logged] = {}  # (log, index) -> first seen
        self._claims: dict[tuple[Log, str], LoggedClaim] = {}  # (log, path) -> first seen
        # The newest head of each log shown consistent with every other head of it this
        # witness holds (the first seen, to begin with), and the sizes still to show so.
        self._newest: dict[Log, SignedTreeHead] = {}
        self._unproven: dict[Log, set[int]] = {}
        # (log, digest of the claim taken back) -> its revocation
        self.revocations: dict[tuple[Log, bytes], LoggedRevocation] = {}
        self._withdrawn: frozenset[tuple[bytes, bytes]] = frozenset()  # asked for every fetch
        self.caught: dict[bytes, Caught] = {}  # raw key -> the proof against it

    def keys_caught(self) -> frozenset[bytes]:
        return frozenset(self.caught)

    def heads_of(self, log: Log) -> list[SignedTreeHead]:
        """The heads seen of one log, one per size, smallest first."""
        return sorted(
            (h for (g, _), h in self._heads.items() if g == log), key=lambda h: h.head.size
        )

    def withdrawn(self) -> frozenset[tuple[bytes, bytes]]:
        """(key, claim digest) of every claim its builder took back."""
        return self._withdrawn

    def seen(self, logged: Logged) -> bool:
        """Whether this very entry, at this index of this log, was observed before."""
        prior = self._leaves.get((logged.head.log, logged.index))
        return prior is not None and prior.leaf == logged.leaf

    def observe(self, logged: Logged) -> Caught | Released | None:
        """A logged claim or revocation that passed `check`; a new catch if it exposes a
        lie, a release if it excuses one."""
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
        if isinstance(logged, LoggedRevocation):
            return self._revoked(logged)
        path = str(logged.claim.claim.store_path)
        first = self._claims.setdefault((log, path), logged)
        if first.claim.claim.outcome != logged.claim.claim.outcome:
            if self._excused(first, logged):
                if logged.index > first.index:
                    self._claims[(log, path)] = logged  # the claim that stands now
                return None
            return self._catch(Claims(first, logged))
        return None

    def _revoked(self, logged: LoggedRevocation) -> Released | None:
        revocation = logged.revocation.revocation
        self.revocations.setdefault((logged.head.log, revocation.claim), logged)
        self._withdrawn |= {(revocation.builder.key, revocation.claim)}
        held = self.caught.get(revocation.builder.key)
        if (
            held is not None
            and isinstance(held.proof, Claims)
            and self._excused(held.proof.a, held.proof.b)
        ):
            del self.caught[revocation.builder.key]
            return Released(held.key)
        return None

    def _excused(self, a: LoggedClaim, b: LoggedClaim) -> bool:
        """Whether the earlier of two claims of one log was revoked before the later."""
        early, late = sorted((a, b), key=lambda x: x.index)
        revoked = self.revocations.get((early.head.log, claim_digest(early.claim.claim)))
        return revoked is not None and early.index < revoked.index < late.index

    def observe_head(self, head: SignedTreeHead) -> Caught | None:
        """A head whose signature verifies."""
        same = self._heads.setdefault((head.log, head.head.size), head)
        if same.head.root != head.head.root:
            return self._catch(Fork(same, head))
        newest = self._newest.setdefault(head.log, head)
        if head.head.size != newest.head.size:
            self._unproven.setdefault(head.log, set()).add(head.head.size)
        return None

    def own(self, head: SignedTreeHead) -> None:
        """A head this node signed of its own log: the newest, with nothing to prove."""
        self._newest[head.log] = head
        self._unproven.pop(head.log, None)

    def newest(self, log: Log) -> SignedTreeHead | None:
        return self._newest.get(log)

    def to_prove(self, log: Log) -> tuple[int, int] | None:
        """Two sizes of `log` whose heads are still to be shown consistent (smaller
        first): the newest head's and another's; None when there is nothing to show."""
        unproven = self._unproven.get(log)
        if not unproven:
            return None
        size, newest = max(unproven), self._newest[log].head.size
        return (size, newest) if size < newest else (newest, size)

    def settle(
        self,
        log: Log,
        old: int,
        new: int,
        a: SignedTreeHead,
        b: SignedTreeHead,
        proof: Sequence[bytes],
    ) -> Caught | None:
        """The builder's answer to "is the log of `old` leaves a prefix of that of `new`":
        its heads of both sizes, signed now, and a consistency proof. A head whose root is
        not the one this witness holds for its size is a FORK; else the proof must verify
        (ValueError if it does not, or if the answer is not to the question)."""
        for head, size in ((a, old), (b, new)):
            if head.log != log or head.head.size != size or not head.valid():
                raise ValueError(f"the answer is not a head of size {size} of that log")
        for head in (a, b):
            catch = self.observe_head(head)
            if catch is not None:
                return catch
        if not merkle.verify_consistency(old, new, a.head.root, b.head.root, proof):
            raise ValueError(f"the consistency proof from {old} to {new} leaves does not verify")
        unproven = self._unproven.get(log, set())
        unproven.discard(old)
        unproven.discard(new)
        if new > self._newest[log].head.size:
            self._newest[log] = self._heads[(log, new)]
        return None

    def receive_proof(self, data: bytes) -> Caught | None:
        """A proof from a peer: a new catch if it holds and convicts a key not yet caught.
        Raises EquivocationError if it does not hold, or a revocation seen here excuses it."""
        proof = equivocation.decode(data)
        if isinstance(proof, Claims) and self._excused(proof.a, proof.b):
            raise EquivocationError(
                "its builder revoked the earlier claim before it signed the other"
            )
        return self._catch(proof)

    def _catch(self, proof: Equivocation) -> Caught | None:
        key = proof.check()
        if key.key in self.caught:
            return None
        caught = Caught(key, proof, equivocation.encode(proof))
        self.caught[key.key] = caught
        return caught
