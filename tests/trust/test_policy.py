"""The quorum policy: k distinct configured keys must sign the same result."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.trust.claims import EVIL, GOOD, PATH_A, PATH_B, make
from trust.claim import SignedClaim
from trust.key import PublicKey, SecretKey
from trust.policy import (
    Conflict,
    Insufficient,
    OnConflict,
    PolicyError,
    QuorumPolicy,
    Reason,
    Trusted,
)
from trust.report import verdict_text

A, B, C = (SecretKey.generate(f"builder-{n}") for n in "abc")
OUTSIDERS = [SecretKey.generate(f"outsider-{n}") for n in range(10)]
POLICY = QuorumPolicy((A.public, B.public, C.public), 2)
MAJORITY = dataclasses.replace(POLICY, on_conflict=OnConflict.MAJORITY)


def reasons(verdict) -> list[Reason]:
    return [i.reason for i in verdict.ignored]


@pytest.mark.parametrize(
    "signers, expected", [((A,), Insufficient), ((A, B), Trusted), ((A, B, C), Trusted)]
)
def test_two_of_three_honest(signers, expected) -> None:
    v = POLICY.decide(PATH_A, [make(k) for k in signers])
    assert type(v) is expected
    if isinstance(v, Trusted):
        assert v.signers == tuple(k.name for k in signers)
        assert v.nar_hash == GOOD and v.manifest_digest == b"\x22" * 32
        assert [c.builder for c in v.claims] == [k.public for k in signers]
    else:
        assert (v.have, v.need, v.missing) == (1, 2, ("builder-b", "builder-c"))


def test_no_claims_at_all() -> None:
    assert POLICY.decide(PATH_A, []) == Insufficient(0, 2, ("builder-a", "builder-b", "builder-c"))


def test_one_liar_is_a_conflict_naming_it() -> None:
    v = POLICY.decide(PATH_A, [make(A), make(B), make(C, nar_hash=EVIL)])
    assert isinstance(v, Conflict)
    by_hash = {o.nar_hash: names for o, names in v.outcomes.items()}
    assert by_hash == {GOOD: ("builder-a", "builder-b"), EVIL: ("builder-c",)}
    # Even a lone liar against a single honest claim blocks the path under "refuse".
    assert isinstance(POLICY.decide(PATH_A, [make(A), make(C, nar_hash=EVIL)]), Conflict)


def test_a_different_manifest_is_a_conflict_too() -> None:
    v = POLICY.decide(PATH_A, [make(A), make(B), make(C, manifest=b"\x33" * 32)])
    assert isinstance(v, Conflict) and len(v.outcomes) == 2


def test_majority_lets_k_agreeing_win_and_reports_the_dissent() -> None:
    v = MAJORITY.decide(PATH_A, [make(A), make(C, nar_hash=EVIL), make(B)])
    assert isinstance(v, Trusted) and v.signers == ("builder-a", "builder-b") and v.nar_hash == GOOD
    assert {o.nar_hash: n for o, n in v.dissent.items()} == {EVIL: ("builder-c",)}
    # Without k agreeing keys the disagreement stays a conflict.
    assert isinstance(MAJORITY.decide(PATH_A, [make(A), make(C, nar_hash=EVIL)]), Conflict)
    # With k = 1, two results each reaching k is no majority at all.
    one = dataclasses.replace(MAJORITY, threshold=1)
    assert isinstance(one.decide(PATH_A, [make(A), make(C, nar_hash=EVIL)]), Conflict)


def test_an_equivocating_key_counts_for_neither_side() -> None:
    claims = [make(A), make(A, nar_hash=EVIL), make(B)]
    assert isinstance(POLICY.decide(PATH_A, claims), Conflict)
    # A disagrees with itself: a conflict, and B alone is short of k.
    assert isinstance(MAJORITY.decide(PATH_A, claims), Conflict)
    v = MAJORITY.decide(PATH_A, claims + [make(C)])
    assert isinstance(v, Trusted) and v.signers == ("builder-b", "builder-c")
    assert reasons(v).count(Reason.EQUIVOCATION) == 2


def test_same_key_three_times_counts_once() -> None:
    v = POLICY.decide(PATH_A, [make(A), make(A), make(A, time=5)])
    assert isinstance(v, Insufficient) and v.have == 1
    assert reasons(v) == [Reason.DUPLICATE, Reason.DUPLICATE]


def test_outsiders_never_count_however_many() -> None:
    v = POLICY.decide(PATH_A, [make(k) for k in OUTSIDERS] + [make(A)])
    assert isinstance(v, Insufficient) and v.have == 1
    assert reasons(v) == [Reason.UNTRUSTED_KEY] * 10
    # Nor does an outsider that took a trusted builder's name.
    impostor = SecretKey.generate("builder-b")
    v = POLICY.decide(PATH_A, [make(A), make(impostor)])
    assert isinstance(v, Insufficient) and reasons(v) == [Reason.UNTRUSTED_KEY]


def test_a_claim_for_another_path_does_not_count() -> None:
    replayed = make(B, path=PATH_B)  # genuinely signed, but about B
    v = POLICY.decide(PATH_A, [make(A), replayed])
    assert isinstance(v, Insufficient) and reasons(v) == [Reason.OTHER_PATH]
    # Re-labelling it for A breaks its signature.
    relabelled = SignedClaim(
        dataclasses.replace(replayed.claim, store_path=PATH_A),
        replayed.signature,
        replayed.nix_signature,
    )
    v = POLICY.decide(PATH_A, [make(A), relabelled])
    assert isinstance(v, Insufficient) and reasons(v) == [Reason.BAD_SIGNATURE]


def _with_sig(s: SignedClaim, sig: bytes) -> SignedClaim:
    return SignedClaim(s.claim, sig, s.nix_signature)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig: sig[:-1],  # truncated
        lambda sig: sig[:32],
        lambda sig: b"",
        lambda sig: sig + b"\x00",  # wrong length
        lambda sig: bytes([sig[0] ^ 1]) + sig[1:],  # bit flips, first and last byte
        lambda sig: sig[:-1] + bytes([sig[-1] ^ 0x80]),
        lambda sig: b"\x00" * 64,
    ],
)
def test_mangled_signatures_are_rejected(mangle) -> None:
    bad = make(B)
    v = POLICY.decide(PATH_A, [make(A), _with_sig(bad, mangle(bad.signature))])
    assert isinstance(v, Insufficient) and reasons(v) == [Reason.BAD_SIGNATURE]
    nix_bad = SignedClaim(bad.claim, bad.signature, mangle(bad.nix_signature))
    v = POLICY.decide(PATH_A, [make(A), nix_bad])
    assert isinstance(v, Insufficient) and reasons(v) == [Reason.BAD_NIX_SIGNATURE]


@pytest.mark.parametrize(
    "trusted, threshold, message",
    [
        ((), 1, "trusts no keys"),
        ((A.public,), 0, "threshold must be a whole number from 1 to 1"),
        ((A.public, B.public), 3, "from 1 to 2"),
        ((A.public,), True, "threshold"),
        (
            (A.public, PublicKey("builder-a", B.public.key)),
            1,
            "two trusted keys are named 'builder-a'",
        ),
        ((A.public, PublicKey("alias", A.public.key)), 1, "are the same key"),
    ],
)
def test_bad_policies(trusted, threshold, message) -> None:
    with pytest.raises(PolicyError, match=message):
        QuorumPolicy(trusted, threshold)


# --- The property: nothing short of k distinct configured keys signing yields Trusted.

TRUSTED_KEYS = (A, B, C)
ALL_KEYS = (
    TRUSTED_KEYS + tuple(OUTSIDERS[:2]) + (SecretKey.generate("builder-a"),)
)  # incl. an impostor
RESULTS = (GOOD, EVIL)


@functools.cache
def _signed(key: int, path: int, result: int) -> SignedClaim:
    return make(ALL_KEYS[key], path=(PATH_A, PATH_B)[path], nar_hash=RESULTS[result])


@st.composite
def claim_and_truth(draw):
    """A claim, and the (trusted key, result) it genuinely proves for PATH_A, if any."""
    key, path, result = (
        draw(st.integers(0, len(ALL_KEYS) - 1)),
        draw(st.integers(0, 1)),
        draw(st.integers(0, 1)),
    )
    s = _signed(key, path, result)
    how = draw(
        st.sampled_from(
            ["honest"] * 4 + ["relabel-path", "relabel-hash", "flip-sig", "flip-nix", "swap-key"]
        )
    )
    if how == "relabel-path":
        s = SignedClaim(
            dataclasses.replace(s.claim, store_path=(PATH_B, PATH_A)[path]),
            s.signature,
            s.nix_signature,
        )
    elif how == "relabel-hash":
        s = SignedClaim(
            dataclasses.replace(s.claim, nar_hash=RESULTS[1 - result]), s.signature, s.nix_signature
        )
    elif how == "flip-sig":
        s = _with_sig(s, bytes([s.signature[0] ^ 1]) + s.signature[1:])
    elif how == "flip-nix":
        s = SignedClaim(
            s.claim,
            s.signature,
            s.nix_signature[:5] + bytes([s.nix_signature[5] ^ 4]) + s.nix_signature[6:],
        )
    elif how == "swap-key":  # claim that another (trusted) key made it
        other = draw(st.integers(0, 2).filter(lambda o: o != key))
        s = SignedClaim(
            dataclasses.replace(s.claim, builder=TRUSTED_KEYS[other].public),
            s.signature,
            s.nix_signature,
        )
    genuine = how == "honest" and key < len(TRUSTED_KEYS) and path == 0
    return s, ((key, RESULTS[result]) if genuine else None)


@given(
    items=st.lists(claim_and_truth(), max_size=12),
    threshold=st.integers(1, 3),
    mode=st.sampled_from(list(OnConflict)),
)
def test_trusted_only_with_k_genuine_distinct_signers(items, threshold, mode) -> None:
    policy = QuorumPolicy(tuple(k.public for k in TRUSTED_KEYS), threshold, mode)
    v = policy.decide(PATH_A, [s for s, _ in items])
    genuine = {t for _, t in items if t is not None}
    if isinstance(v, Trusted):
        names = {TRUSTED_KEYS[k].name: k for k in range(3)}
        assert len(set(v.signers)) == len(v.signers) >= threshold
        for name in v.signers:
            assert (names[name], v.nar_hash) in genuine
        if mode is OnConflict.REFUSE:
            assert {h for _, h in genuine} == {v.nar_hash}
    # And the converse for honest input: k genuine agreeing signers and no dissent is Trusted.
    by_result = {h: {k for k, hh in genuine if hh == h} for _, h in genuine}
    if len(by_result) == 1 and len(next(iter(by_result.values()))) >= threshold:
        assert isinstance(v, Trusted)


def test_a_refusal_names_the_keys_outside_the_policy() -> None:
    v = POLICY.decide(PATH_A, [make(A), make(OUTSIDERS[1]), make(OUTSIDERS[0])])
    assert isinstance(v, Insufficient)
    text = verdict_text(POLICY, v)
    assert "1 of the 2" in text
    assert "not counted, from keys outside the policy: outsider-0, outsider-1" in text
    assert "outside" not in verdict_text(POLICY, POLICY.decide(PATH_A, [make(A)]))
