"""Signed tree heads (strict, domain-separated) and proofs of equivocation: each kind
holds when a builder told two stories, and nothing else passes for one."""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trust import equivocation, merkle, treehead
from trust.claim import DOMAIN as CLAIM_DOMAIN
from trust.claimlog import ClaimLog
from trust.equivocation import Claims, EquivocationError, Fork, Leaves
from trust.key import SecretKey
from trust.logged import LoggedClaim
from trust.merkle import Tree
from trust.treehead import SignedTreeHead, TreeHead, TreeHeadError

from .claims import EVIL, PATH_A, PATH_B, make

KEY = SecretKey.generate("builder-1")
OTHER = SecretKey.generate("builder-2")
T = 1_700_000_000
LOG, OTHER_LOG = b"\x07" * 16, b"\x08" * 16


@given(st.integers(0, (1 << 63) - 1), st.binary(min_size=32, max_size=32), st.integers(0, 1 << 40))
def test_a_signed_head_decodes_to_itself_and_verifies(size: int, root: bytes, when: int) -> None:
    signed = treehead.sign(KEY, LOG, size, root, when)
    again = SignedTreeHead.decode(signed.encode())
    assert again == signed and again.valid()
    assert again.head == TreeHead(KEY.public, LOG, size, root, when)


def test_a_heads_signature_is_its_own_domain() -> None:
    signed = treehead.sign(KEY, LOG, 3, b"\x01" * 32, T)
    # The same bytes signed as a claim body do not make a head signature, nor the reverse.
    as_claim = KEY.sign(CLAIM_DOMAIN + signed.head.encode())
    assert not SignedTreeHead(signed.head, as_claim).valid()
    assert not KEY.public.verify(CLAIM_DOMAIN + signed.head.encode(), signed.signature)
    other_size = TreeHead(KEY.public, LOG, 4, signed.head.root, T)
    assert not SignedTreeHead(other_size, signed.signature).valid()


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_the_formats_own_error(raw: bytes) -> None:
    with contextlib.suppress(TreeHeadError):
        SignedTreeHead.decode(raw)
    with contextlib.suppress(EquivocationError):
        equivocation.decode(raw)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: [*h[:4], -1, *h[5:]],
        lambda h: [*h[:5], h[5][:31], h[6]],
        lambda h: [h[0], h[1], h[2][:31], *h[3:]],
        lambda h: [*h[:3], h[3][:15], *h[4:]],
        lambda h: ["ferry-claim-1", *h[1:]],
        lambda h: [*h, 0],
        lambda h: [*h[:4], True, *h[5:]],
    ],
)
def test_bad_heads_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    head = msgpack.unpackb(treehead.sign(KEY, LOG, 3, b"\x01" * 32, T).head.encode())
    with pytest.raises(TreeHeadError):
        TreeHead.decode(msgpack.packb(mutate(head), use_bin_type=True))


def _forked_logs(n_a: int, n_b: int, at: int) -> tuple[Tree, Tree]:
    """Two logs of one builder, equal up to leaf `at`, different from there."""
    a, b = Tree(), Tree()
    for i in range(max(n_a, n_b)):
        if i < n_a:
            a.append(b"claim %d" % i)
        if i < n_b:
            b.append(b"claim %d" % i if i < at else b"other claim %d" % i)
    return a, b


def _leaves(a: Tree, b: Tree, index: int, leaf_a: bytes, leaf_b: bytes) -> Leaves:
    return Leaves(
        treehead.sign(KEY, LOG, len(a), a.root(), T),
        treehead.sign(KEY, LOG, len(b), b.root(), T + 1),
        index,
        leaf_a,
        tuple(a.inclusion(index)),
        leaf_b,
        tuple(b.inclusion(index)),
    )


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.data())
def test_two_logs_that_differ_make_a_leaves_proof_any_node_can_check(
    n_a: int, n_b: int, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, min(n_a, n_b) - 1), label="fork point")
    a, b = _forked_logs(n_a, n_b, at)
    proof = _leaves(a, b, at, b"claim %d" % at, b"other claim %d" % at)
    assert proof.check() == KEY.public
    assert equivocation.decode(equivocation.encode(proof)) == proof
    # The two heads are indeed inconsistent: no proof from the builder's log joins them.
    small, big = sorted((a, b), key=len)
    assert not merkle.verify_consistency(
        len(small), len(big), small.root(), big.root(), big.consistency(len(small))
    )


def test_a_leaves_proof_with_anything_altered_is_refused() -> None:
    a, b = _forked_logs(20, 30, 7)
    good = _leaves(a, b, 7, b"claim 7", b"other claim 7")
    bad = [
        _leaves(a, b, 7, b"claim 7", b"claim 7"),  # the same leaf twice
        _leaves(a, b, 6, b"claim 6", b"claim 6"),
        _leaves(a, b, 7, b"claim 7", b"forged"),  # not in B's tree
        Leaves(
            good.a,
            good.b,
            8,
            *[getattr(good, f) for f in ("leaf_a", "proof_a", "leaf_b", "proof_b")],
        ),
        Leaves(
            good.a,
            treehead.sign(OTHER, LOG, len(b), b.root(), T),
            *[getattr(good, f) for f in ("index", "leaf_a", "proof_a", "leaf_b", "proof_b")],
        ),
        Leaves(
            good.a,
            SignedTreeHead(good.b.head, b"\x00" * 64),
            *[getattr(good, f) for f in ("index", "leaf_a", "proof_a", "leaf_b", "proof_b")],
        ),
        Leaves(good.a, good.b, 7, good.leaf_a, good.proof_a[1:], good.leaf_b, good.proof_b),
    ]
    for proof in bad:
        with pytest.raises(EquivocationError):
            proof.check()
        with pytest.raises(EquivocationError):
            equivocation.decode(equivocation.encode(proof))


def test_a_fork_is_two_heads_of_one_log_and_size_with_different_roots() -> None:
    proof = Fork(
        treehead.sign(KEY, LOG, 5, b"\x01" * 32, T), treehead.sign(KEY, LOG, 5, b"\x02" * 32, T)
    )
    assert equivocation.decode(equivocation.encode(proof)).check() == KEY.public
    for a, b in [
        (treehead.sign(KEY, LOG, 5, b"\x01" * 32, T), treehead.sign(KEY, LOG, 6, b"\x02" * 32, T)),
        (
            treehead.sign(KEY, LOG, 5, b"\x01" * 32, T),
            treehead.sign(KEY, LOG, 5, b"\x01" * 32, T + 9),
        ),
        (
            treehead.sign(KEY, LOG, 5, b"\x01" * 32, T),
            treehead.sign(OTHER, LOG, 5, b"\x02" * 32, T),
        ),
        # One key, two logs (two machines): not a lie.
        (
            treehead.sign(KEY, LOG, 5, b"\x01" * 32, T),
            treehead.sign(KEY, OTHER_LOG, 5, b"\x02" * 32, T),
        ),
    ]:
        with pytest.raises(EquivocationError):
            equivocation.decode(equivocation.encode(Fork(a, b)))


def _logged(log: ClaimLog, key: SecretKey, **claim: object) -> LoggedClaim:
    signed = make(key, **claim)  # type: ignore[arg-type]
    log.append(signed.claim.encode())
    head = log.head(T)
    proved = log.prove(signed.claim.encode(), head)
    return LoggedClaim(signed, head, proved.index, proved.proof)


def test_two_claims_in_one_log_for_one_path_with_different_outcomes_are_a_proof(
    tmp_path: Path,
) -> None:
    with ClaimLog(str(tmp_path / "one"), KEY) as one, ClaimLog(str(tmp_path / "two"), KEY) as two:
        good, evil = _logged(one, KEY), _logged(one, KEY, nar_hash=EVIL)
        proof = Claims(good, evil)
        assert equivocation.decode(equivocation.encode(proof)).check() == KEY.public
        for a, b in [
            (good, _logged(one, KEY, time=T + 5)),  # the same outcome, signed again: no lie
            (good, _logged(one, KEY, path=PATH_B, nar_hash=EVIL)),
            # Another log of the key (another machine that built the path): not a lie.
            (good, _logged(two, KEY, nar_hash=EVIL)),
        ]:
            with pytest.raises(EquivocationError):
                equivocation.decode(equivocation.encode(Claims(a, b)))
    assert good.claim.claim.store_path == PATH_A
