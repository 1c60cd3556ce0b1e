"""A builder taking back one claim it signed by mistake: the revocation's format, its
place in the builder's log, the policy (a revoked claim never counts), and the witness
(a correction made in the open is not a second story)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.path import StorePath
from tests.cli import ferry
from trust import equivocation, revocation
from trust.claim import SignedClaim
from trust.claimlog import ClaimLog
from trust.equivocation import Claims, EquivocationError
from trust.key import SecretKey
from trust.logged import LoggedClaim, LoggedError, LoggedRevocation, decode_entry
from trust.policy import Insufficient, QuorumPolicy, Reason, Trusted
from trust.revocation import (
    Revocation,
    RevocationError,
    SignedRevocation,
    claim_digest,
    revoke,
)
from trust.witness import Caught, Released, Witness

from .claims import EVIL, GOOD, PATH_A, PATH_B, make

BUILDER = SecretKey.generate("builder-1")
OTHER = SecretKey.generate("builder-2")


def _log(log: ClaimLog, entry: SignedClaim | SignedRevocation) -> LoggedClaim | LoggedRevocation:
    """Append a signed claim or revocation to the log; it with a fresh head."""
    leaf = (
        entry.revocation.encode() if isinstance(entry, SignedRevocation) else entry.claim.encode()
    )
    log.append(leaf)
    head = log.head(1_700_000_000 + len(log))
    proved = log.prove(leaf, head)
    if isinstance(entry, SignedRevocation):
        return LoggedRevocation(entry, head, proved.index, proved.proof)
    return LoggedClaim(entry, head, proved.index, proved.proof)


@given(
    name=st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
    time=st.integers(0, (1 << 63) - 1),
    digest=st.binary(min_size=32, max_size=32),
    path=st.sampled_from([PATH_A, PATH_B]),
)
def test_a_revocation_round_trips_and_its_signature_is_its_own(
    name: str, time: int, digest: bytes, path: StorePath
) -> None:
    key = SecretKey.generate(name)
    r = Revocation(key.public, path, digest, time)
    assert Revocation.decode(r.encode()) == r
    signed = SignedRevocation(r, key.sign(revocation.DOMAIN + r.encode()))
    assert SignedRevocation.decode(signed.encode()) == signed and signed.valid()
    # The same bytes signed as something else (a claim's domain) do not verify.
    assert not SignedRevocation(r, key.sign(b"ferry-claim-1\0" + r.encode())).valid()


@given(st.binary(max_size=400))
def test_any_bytes_decode_as_a_revocation_or_raise_its_error(raw: bytes) -> None:
    with contextlib.suppress(RevocationError):
        SignedRevocation.decode(raw)
    with contextlib.suppress(LoggedError):
        decode_entry(raw)


def test_only_the_claims_own_key_revokes_it_and_only_that_claim() -> None:
    c = make(BUILDER).claim
    r = revoke(c, BUILDER, time=1_700_000_100).revocation
    assert r.revokes(c) and r.claim == claim_digest(c)
    assert not r.revokes(make(BUILDER, time=1_700_000_001).claim)  # another claim, same path
    with pytest.raises(RevocationError):
        revoke(c, OTHER)
    # A revocation by another key, naming this claim's digest, names nothing of its.
    forged = Revocation(OTHER.public, PATH_A, claim_digest(c), 1)
    assert not forged.revokes(c)


def test_a_revoked_claim_never_counts_and_the_keys_other_claims_still_do() -> None:
    policy = QuorumPolicy((BUILDER.public, OTHER.public), threshold=2)
    mistake, later = make(BUILDER), make(BUILDER, path=PATH_B)
    claims = [mistake, make(OTHER)]
    assert isinstance(policy.decide(PATH_A, claims), Trusted)
    held = dataclasses.replace(
        policy, withdrawn=frozenset({(BUILDER.public.key, claim_digest(mistake.claim))})
    )
    verdict = held.decide(PATH_A, claims)
    assert isinstance(verdict, Insufficient) and verdict.have == 1
    assert [(i.claim, i.reason) for i in verdict.ignored] == [(mistake, Reason.WITHDRAWN)]
    assert isinstance(held.decide(PATH_B, [later, make(OTHER, path=PATH_B)]), Trusted)
    # Nor does the revoked claim count again under a threshold of one, or as a duplicate.
    one = dataclasses.replace(held, threshold=1)
    assert isinstance(one.decide(PATH_A, [mistake, mistake]), Insufficient)
    # A key's revocation of its claim does not touch another key's identical-looking one.
    assert isinstance(one.decide(PATH_A, [make(OTHER)]), Trusted)


def test_a_logged_revocation_decodes_checked(tmp_path: Path) -> None:
    with ClaimLog(str(tmp_path), BUILDER) as log:
        claimed = _log(log, make(BUILDER))
        assert isinstance(claimed, LoggedClaim)
        revoked = _log(log, revoke(claimed.claim.claim, BUILDER, time=1_700_000_100))
    assert decode_entry(revoked.encode()) == revoked and decode_entry(claimed.encode()) == claimed
    with pytest.raises(LoggedError):
        LoggedClaim.decode(revoked.encode())
    assert isinstance(revoked, LoggedRevocation)
    bad = [
        dataclasses.replace(revoked, index=0),
        dataclasses.replace(revoked, revocation=revoke(make(OTHER).claim, OTHER)),
        dataclasses.replace(revoked, proof=revoked.proof[:-1]),
    ]
    for wrong in bad:
        with pytest.raises(LoggedError):
            decode_entry(wrong.encode())


def test_the_log_knows_which_claim_stands_for_a_path(tmp_path: Path) -> None:
    with ClaimLog(str(tmp_path), BUILDER) as log:
        first = make(BUILDER)
        _log(log, first)
        assert log.standing(str(PATH_A)) == first.claim
        _log(log, revoke(first.claim, BUILDER))
        assert log.standing(str(PATH_A)) is None
        second = make(BUILDER, nar_hash=EVIL, time=1_700_000_200)
        _log(log, second)
    with ClaimLog(str(tmp_path), BUILDER) as reopened:  # rebuilt from the leaves
        assert reopened.standing(str(PATH_A)) == second.claim
        assert reopened.standing(str(PATH_B)) is None


def test_a_correction_in_the_open_is_not_two_stories(tmp_path: Path) -> None:
    w = Witness()
    with ClaimLog(str(tmp_path), BUILDER) as log:
        wrong = _log(log, make(BUILDER, nar_hash=EVIL))
        took_back = _log(log, revoke(make(BUILDER, nar_hash=EVIL).claim, BUILDER))
        right = _log(log, make(BUILDER, nar_hash=GOOD, time=1_700_000_300))
    for logged in (wrong, took_back, right):
        assert w.observe(logged) is None
    assert not w.caught
    assert w.withdrawn() == {(BUILDER.public.key, claim_digest(make(BUILDER, nar_hash=EVIL).claim))}
    # Whoever hears the correction first and the mistake last reaches the same place.
    late = Witness()
    for logged in (right, took_back, wrong):
        assert late.observe(logged) is None
    assert not late.caught


def test_a_revocation_after_the_second_story_excuses_nothing(tmp_path: Path) -> None:
    w = Witness()
    with ClaimLog(str(tmp_path), BUILDER) as log:
        one = _log(log, make(BUILDER, nar_hash=GOOD))
        two = _log(log, make(BUILDER, nar_hash=EVIL, time=1_700_000_300))
        # Both stood at once; taking the first back afterwards does not undo that.
        after = _log(log, revoke(make(BUILDER, nar_hash=GOOD).claim, BUILDER))
    assert w.observe(one) is None
    caught = w.observe(two)
    assert isinstance(caught, Caught) and caught.kind == "CLAIMS"
    assert w.observe(after) is None and BUILDER.public.key in w.caught


def test_a_catch_a_revocation_excuses_is_released_and_its_proof_refused(tmp_path: Path) -> None:
    with ClaimLog(str(tmp_path), BUILDER) as log:
        wrong = _log(log, make(BUILDER, nar_hash=EVIL))
        took_back = _log(log, revoke(make(BUILDER, nar_hash=EVIL).claim, BUILDER))
        right = _log(log, make(BUILDER, nar_hash=GOOD, time=1_700_000_300))
    assert isinstance(wrong, LoggedClaim) and isinstance(right, LoggedClaim)
    # The revocation was late to arrive: the two claims alone look like two stories.
    w = Witness()
    w.observe(wrong)
    caught = w.observe(right)
    assert isinstance(caught, Caught)
    assert w.observe(took_back) == Released(BUILDER.public)
    assert not w.caught
    # A node that holds the revocation refuses the proof another node still sends.
    proof = equivocation.encode(Claims(wrong, right))
    with pytest.raises(EquivocationError, match="revoked the earlier claim"):
        w.receive_proof(proof)
    assert Witness().receive_proof(proof) is not None  # without it, the proof holds


def test_ferry_trust_revoke_claim_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    assert ferry("trust", "keygen", "builder-1", "-o", str(tmp_path / "b")).returncode == 0
    secret, sp = str(tmp_path / "b.secret"), "/nix/store/" + "7" * 32 + "-hello-2.12"
    data = ("--data-dir", str(tmp_path / "no-node"))
    for args, status, says in (
        (("not-a-path", "--key", secret), 3, "STORE_PATH: 'not-a-path' is not a full store path"),
        ((sp, "--key", str(tmp_path / "nope")), 3, "no such file"),
        ((sp, "--key", secret), 1, "no ferry node is running"),
    ):
        r = ferry("trust", "revoke-claim", *args, *data)
        assert r.returncode == status and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
