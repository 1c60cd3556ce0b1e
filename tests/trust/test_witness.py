"""Logged claims, and the witness that catches a builder telling two stories: from what
two clients were each handed, and from a proof a third node was sent."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.hash import Hash
from store.path import StorePath
from trust.claimlog import ClaimLog
from trust.equivocation import EquivocationError
from trust.key import SecretKey
from trust.logged import LoggedClaim, LoggedError
from trust.policy import Insufficient, QuorumPolicy, Reason, Trusted
from trust.witness import Witness

from .claims import EVIL, GOOD, PATH_A, STORE, make

BUILDER = SecretKey.generate("builder-1")
HONEST = SecretKey.generate("builder-2")


def _path(i: int) -> StorePath:
    return StorePath(STORE, f"{i:032d}", f"pkg-{i}")


def _publish(log: ClaimLog, key: SecretKey, path: StorePath, nar_hash: Hash = GOOD) -> LoggedClaim:
    """What a builder hands out: the claim, appended to its log, with a fresh head."""
    signed = make(key, path=path, nar_hash=nar_hash)
    log.append(signed.claim.encode())
    head = log.head(1_700_000_000 + len(log))
    proved = log.prove(signed.claim.encode(), head)
    return LoggedClaim(signed, head, proved.index, proved.proof)


def test_a_logged_claim_decodes_checked_and_nothing_altered_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ClaimLog(str(tmp_path), BUILDER) as log:
        for i in range(5):
            logged = _publish(log, BUILDER, _path(i))
        assert LoggedClaim.decode(logged.encode()) == logged
        wrong = [
            LoggedClaim(logged.claim, logged.head, logged.index - 1, logged.proof),
            LoggedClaim(make(BUILDER, path=_path(9)), logged.head, logged.index, logged.proof),
            LoggedClaim(make(HONEST, path=_path(4)), logged.head, logged.index, logged.proof),
            LoggedClaim(logged.claim, logged.head, logged.index, logged.proof[1:]),
        ]
        for bad in wrong:
            with pytest.raises(LoggedError):
                LoggedClaim.decode(bad.encode())


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_logged_error(raw: bytes) -> None:
    with contextlib.suppress(LoggedError):
        LoggedClaim.decode(raw)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 30), st.integers(1, 30), st.integers(1, 30), st.booleans())
def test_a_builder_that_forks_its_log_is_caught_by_whoever_sees_both_and_by_a_third(
    common: int, more_a: int, more_b: int, same_path: bool
) -> None:
    """The builder forks its log after `common` claims: one branch for client A, one for
    client B. Once a client sees what the other was handed, it holds a proof; a third
    node that saw neither believes the proof alone."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        da, db = f"{d}/a", f"{d}/b"
        handed_a, handed_b = [], []
        with ClaimLog(da, BUILDER) as log:
            for i in range(common):
                handed_a.append(_publish(log, BUILDER, _path(i)))
        shutil.copytree(da, db)  # the fork: the same log, id and leaves, from here two
        handed_b = list(handed_a)
        with ClaimLog(da, BUILDER) as log_a, ClaimLog(db, BUILDER) as log_b:
            for i in range(more_a):
                handed_a.append(_publish(log_a, BUILDER, _path(100 + i)))
            for i in range(more_b):
                # The same path, another result; or other paths altogether.
                path = _path(100 + i) if same_path else _path(200 + i)
                handed_b.append(_publish(log_b, BUILDER, path, nar_hash=EVIL))
            assert log_a.log_id == log_b.log_id
        a, b, third = Witness(), Witness(), Witness()
        assert not any(a.observe(x) for x in handed_a)
        assert not any(b.observe(x) for x in handed_b)
        caught = [c for c in (a.observe(x) for x in handed_b) if c is not None]
        assert len(caught) == 1 and caught[0].key == BUILDER.public
        assert a.keys_caught() == {BUILDER.public.key}
        catch = third.receive_proof(caught[0].encoded)
        assert catch is not None and third.keys_caught() == {BUILDER.public.key}
        assert third.receive_proof(caught[0].encoded) is None  # already caught


def test_an_honest_growing_log_is_never_caught(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = Witness()
    with ClaimLog(str(tmp_path), HONEST) as log:
        handed = [_publish(log, HONEST, _path(i)) for i in range(40)]
    # In any order, twice over: heads of one log never fork, leaves never differ.
    for logged in handed[::-1] + handed:
        assert w.observe(logged) is None
    (log_id,) = {x.head.head.log for x in handed}
    assert w.heads_of((HONEST.public.key, log_id))[-1].head.size == 40 and not w.caught


def test_two_results_for_one_path_in_one_log_are_caught_and_in_two_logs_are_not(
    tmp_path: Path,
) -> None:
    w = Witness()
    with (
        ClaimLog(str(tmp_path / "one"), BUILDER) as one,
        ClaimLog(str(tmp_path / "two"), BUILDER) as two,
    ):
        assert w.observe(_publish(one, BUILDER, PATH_A)) is None
        # The key's other machine built the path too, and got another result: two logs.
        assert w.observe(_publish(two, BUILDER, PATH_A, nar_hash=EVIL)) is None
        assert not w.caught
        caught = w.observe(_publish(one, BUILDER, PATH_A, nar_hash=EVIL))
    assert caught is not None and caught.kind == "CLAIMS"


def test_a_proof_that_does_not_hold_convicts_nobody() -> None:
    w = Witness()
    with pytest.raises(EquivocationError):
        w.receive_proof(b"\x93\x02\xc4\x00\xc4\x00")
    assert not w.caught


def test_a_caught_key_counts_for_nothing_in_the_policy() -> None:
    policy = QuorumPolicy((BUILDER.public, HONEST.public), threshold=2)
    claims = [make(BUILDER), make(HONEST)]
    assert isinstance(policy.decide(PATH_A, claims), Trusted)
    verdict = dataclasses.replace(policy, caught=frozenset({BUILDER.public.key})).decide(
        PATH_A, claims
    )
    assert isinstance(verdict, Insufficient) and verdict.have == 1
    assert [i.reason for i in verdict.ignored] == [Reason.CAUGHT]
