"""The quorum policy: accept a store path only when k of a configured set of builder
keys signed the same build result.

Only *distinct configured keys* count, never the number of claims or of peers that
answered (the flaw DESIGN.md notes in Trustix): a key counts once however many claims
it signed, and a claim counts only if both its signatures verify under a configured
key (same name and bytes) and it is about the store path being decided. Everything
else is ignored and reported, so an operator can see who is lying or misconfigured.

A conflict — configured keys that validly signed different results for one path — is
never resolved silently. With `on_conflict = refuse` (the default) it refuses the path;
with `majority` a result that k keys agree on still wins, and the dissent is reported
with it. A key that signed two different results for one path counts for neither.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from store.hash import Hash
from store.path import StorePath
from trust.claim import Outcome, SignedClaim
from trust.key import PublicKey
from trust.revocation import claim_digest


class PolicyError(ValueError):
    """A quorum policy that cannot work; the message says which setting to change."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class OnConflict(enum.Enum):
    REFUSE = "refuse"
    MAJORITY = "majority"


class Reason(enum.Enum):
    """Why a claim did not count."""

    BAD_SIGNATURE = "claim signature does not verify"
    BAD_NIX_SIGNATURE = "Nix signature does not verify"
    OTHER_PATH = "claim is for another store path"
    UNTRUSTED_KEY = "key is not in the policy"
    DUPLICATE = "key already counted"
    EQUIVOCATION = "key signed different results for this path"
    CAUGHT = "key was caught telling two stories (a proof is held; see `ferry trust`)"
    REVOKED = "key was revoked before the claim's time"
    OUT_OF_WINDOW = "claim is dated outside its key's validity (rotated out, or not yet in)"
    WITHDRAWN = "claim was revoked by its builder (a logged revocation is held)"
    UNLOGGED = "claim came without its place in its builder's log (the policy requires one)"
    OTHER_LOG = "claim is not in the log the policy pins its key to"


@dataclass(frozen=True, slots=True)
class KeyLife:
    """When a trusted key's claims count, by the time each claim carries (seconds since
    the epoch): from `not_before`, until `not_after` (a rotation's end) and `revoked`.
    `successor` names the key that took over from it: the two are one builder, and
    count once between them."""

    not_before: int | None = None
    not_after: int | None = None
    revoked: int | None = None
    successor: str | None = None
    # The one log (its 16-byte id, trust.treehead) whose claims count: a builder that
    # starts another log for some clients is not believed in it.
    log: bytes | None = None

    def counts_at(self, when: int) -> Reason | None:
        if self.revoked is not None and when >= self.revoked:
            return Reason.REVOKED
        if (self.not_before is not None and when < self.not_before) or (
            self.not_after is not None and when >= self.not_after
        ):
            return Reason.OUT_OF_WINDOW
        return None


_FOREVER = KeyLife()


@dataclass(frozen=True, slots=True)
class Ignored:
    index: int  # position in the claims given to decide()
    claim: SignedClaim
    reason: Reason


@dataclass(frozen=True)
class Trusted:
    outcome: Outcome
    signers: tuple[str, ...]
    claims: tuple[SignedClaim, ...]  # one per signer, in policy order
    dissent: Mapping[Outcome, tuple[str, ...]] = field(
        default_factory=dict
    )  # only with on_conflict=majority
    ignored: tuple[Ignored, ...] = ()

    @property
    def nar_hash(self) -> Hash:
        return self.outcome.nar_hash

    @property
    def manifest_digest(self) -> bytes:
        return self.outcome.manifest_digest


@dataclass(frozen=True)
class Insufficient:
    have: int  # distinct configured keys agreeing on the best-supported result
    need: int
    missing: tuple[str, ...]  # configured keys with no valid claim for the path
    ignored: tuple[Ignored, ...] = ()


@dataclass(frozen=True)
class Conflict:
    outcomes: Mapping[Outcome, tuple[str, ...]]  # result -> configured keys that signed it
    ignored: tuple[Ignored, ...] = ()


Verdict = Trusted | Insufficient | Conflict


@dataclass(frozen=True)
class QuorumPolicy:
    trusted: tuple[PublicKey, ...]
    threshold: int
    on_conflict: OnConflict = OnConflict.REFUSE
    # Raw keys a proof of equivocation names (trust.equivocation, trust.witness): the
    # node that holds the proofs sets them on the policy each fetch uses.
    caught: frozenset[bytes] = frozenset()
    # (raw key, claim digest) of claims their builders revoked (trust.revocation): set,
    # like `caught`, by the node that holds the revocations.
    withdrawn: frozenset[tuple[bytes, bytes]] = frozenset()
    # Count a claim only if it was shown to be in its builder's log (trust.logged), in
    # the one `KeyLife.log` names if any; `logs` maps a claim's digest to the logs it was
    # shown in (node.daemon.logbook, set by the node like `caught`).
    require_logs: bool = False
    logs: Mapping[bytes, frozenset[bytes]] = field(default_factory=dict, compare=False)
    # Key name -> its life (rotation, revocation); keys not named live forever.
    lives: tuple[tuple[str, KeyLife], ...] = ()
    _seats: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _lives: dict[str, KeyLife] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.trusted:
            raise PolicyError(
                "the policy trusts no keys: add builder public keys to 'trusted'", "trusted"
            )
        names: set[str] = set()
        keys: dict[bytes, str] = {}
        for k in self.trusted:
            if k.name in names:
                # Nix matches Sig: lines to keys by name: two keys with one name are ambiguous.
                raise PolicyError(
                    f"two trusted keys are named {k.name!r}; key names must be unique", "trusted"
                )
            if k.key in keys:
                raise PolicyError(
                    f"keys {keys[k.key]!r} and {k.name!r} are the same key; list it once", "trusted"
                )
            names.add(k.name)
            keys[k.key] = k.name
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int)
            or not 1 <= self.threshold <= len(self.trusted)
        ):
            raise PolicyError(
                f"threshold must be a whole number from 1 to {len(self.trusted)} (the number of trusted keys), "
                f"not {self.threshold!r}",
                "threshold",
            )
        object.__setattr__(self, "_lives", dict(self.lives))
        object.__setattr__(self, "_seats", self._check_lives(names))
        seats = len(set(self._seats.values()))
        if self.threshold > seats:
            raise PolicyError(
                f"threshold {self.threshold} is more than the {seats} builders the trusted keys "
                "are (a key and its successor are one builder)",
                "threshold",
            )

    def _check_lives(self, names: set[str]) -> dict[str, str]:
        """Each key's builder (its first predecessor's name); checks the lives."""
        before: dict[str, str] = {}
        for name, life in self._lives.items():
            if name not in names:
                raise PolicyError(f"keys.{name}: no trusted key is named {name!r}", "keys")
            nxt = life.successor
            if nxt is not None:
                if nxt not in names or nxt == name:
                    raise PolicyError(
                        f"keys.{name}: successor {nxt!r} must be another trusted key", "keys"
                    )
                if nxt in before:
                    raise PolicyError(
                        f"keys.{name}: {nxt!r} already succeeds {before[nxt]!r}", "keys"
                    )
                before[nxt] = name
        seats = {}
        for name in names:
            first, seen = name, {name}
            while first in before:
                first = before[first]
                if first in seen:
                    raise PolicyError(f"keys.{name}: successors go round in a circle", "keys")
                seen.add(first)
            seats[name] = first
        return seats

    @property
    def wants_any_logs(self) -> bool:
        """Whether some claim counts only with evidence of its log (`logs`)."""
        return self.require_logs or any(life.log is not None for life in self._lives.values())

    def _unlisted(self, c: SignedClaim) -> Reason | None:
        """Whether the claim was revoked, or lacks the log the policy asks of it."""
        digest = claim_digest(c.claim)
        if (c.builder.key, digest) in self.withdrawn:
            return Reason.WITHDRAWN
        pinned = self.life(c.builder.name).log
        shown = self.logs.get(digest, frozenset())
        if pinned is not None:
            return None if pinned in shown else Reason.OTHER_LOG if shown else Reason.UNLOGGED
        if self.require_logs and not shown:
            return Reason.UNLOGGED
        return None

    def wants_logs(self, c: SignedClaim) -> bool:
        """Whether evidence of `c`'s log (not held yet) could make it count."""
        if not (self.require_logs or self.life(c.builder.name).log is not None):
            return False
        return c.builder in self.trusted and claim_digest(c.claim) not in self.logs

    def life(self, name: str) -> KeyLife:
        return self._lives.get(name, _FOREVER)

    def decide(self, store_path: StorePath, claims: Iterable[SignedClaim]) -> Verdict:
        """The verdict the claims give. A key in `caught` counts for nothing, nor does a
        claim in `withdrawn`."""
        caught, withdrawn = self.caught, self.withdrawn
        listed = bool(withdrawn) or self.wants_any_logs
        ignored: list[Ignored] = []
        # key name -> result -> (index, claim) of its first claim for that result
        votes: dict[str, dict[Outcome, tuple[int, SignedClaim]]] = {}
        for i, c in enumerate(claims):
            reason = self._reject(store_path, c)
            if reason is None and c.builder.key in caught:
                reason = Reason.CAUGHT
            if reason is None and listed:
                reason = self._unlisted(c)
            if reason is None:
                seen = votes.setdefault(self._seats[c.builder.name], {})
                if c.claim.outcome in seen:
                    reason = Reason.DUPLICATE
                else:
                    seen[c.claim.outcome] = (i, c)
            if reason is not None:
                ignored.append(Ignored(i, c, reason))

        order = list(dict.fromkeys(self._seats[k.name] for k in self.trusted))
        groups: dict[Outcome, list[str]] = {}
        for name in order:
            for outcome in votes.get(name, {}):
                groups.setdefault(outcome, []).append(name)
        missing = tuple(n for n in order if n not in votes)
        if len(groups) > 1:
            return self._conflict(groups, votes, ignored)
        if not groups:
            return Insufficient(0, self.threshold, missing, tuple(ignored))
        ((outcome, names),) = groups.items()
        if len(names) < self.threshold:
            return Insufficient(len(names), self.threshold, missing, tuple(ignored))
        claims = tuple(votes[n][outcome][1] for n in names)
        return Trusted(outcome, tuple(c.builder.name for c in claims), claims, {}, tuple(ignored))

    def _reject(self, store_path: StorePath, c: SignedClaim) -> Reason | None:
        if not c.claim_valid():
            return Reason.BAD_SIGNATURE
        if not c.nix_valid():
            # A claim whose Nix signature is bad could not be handed to Nix: worthless.
            return Reason.BAD_NIX_SIGNATURE
        if c.claim.store_path != store_path:
            return Reason.OTHER_PATH
        if c.builder not in self.trusted:
            return Reason.UNTRUSTED_KEY
        return self.life(c.builder.name).counts_at(c.claim.time)

    def _conflict(
        self,
        groups: dict[Outcome, list[str]],
        votes: dict[str, dict[Outcome, tuple[int, SignedClaim]]],
        ignored: list[Ignored],
    ) -> Verdict:
        everyone = {o: tuple(n) for o, n in groups.items()}
        if self.on_conflict is OnConflict.MAJORITY:
            torn = {n for n, results in votes.items() if len(results) > 1}
            for name in sorted(torn):
                for i, c in votes[name].values():
                    ignored.append(Ignored(i, c, Reason.EQUIVOCATION))
            ignored.sort(key=lambda x: x.index)
            firm = {o: [n for n in names if n not in torn] for o, names in groups.items()}
            winners = [o for o, names in firm.items() if len(names) >= self.threshold]
            if len(winners) == 1:
                (win,) = winners
                signers = tuple(firm[win])
                dissent = {}
                for o, names in groups.items():
                    others = tuple(n for n in names if o != win or n not in signers)
                    if others:
                        dissent[o] = others
                return Trusted(
                    win, signers, tuple(votes[n][win][1] for n in signers), dissent, tuple(ignored)
                )
        return Conflict(everyone, tuple(ignored))
