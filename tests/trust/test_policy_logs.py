"""A policy that requires logs, or pins a key to one log: a claim counts only with
evidence of its place (node.daemon.logbook keeps it); the policy file holds both."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.daemon.logbook import Logbook
from trust import policyfile
from trust.claimlog import ClaimLog
from trust.key import SecretKey
from trust.logged import LoggedClaim
from trust.policy import Insufficient, KeyLife, PolicyError, QuorumPolicy, Reason, Trusted
from trust.revocation import claim_digest

from .claims import PATH_A, make

BUILDER = SecretKey.generate("builder-1")
ELDER = SecretKey.generate("elder-1")
LOG, OTHER = b"\x01" * 16, b"\x02" * 16


def test_without_the_setting_claims_count_with_or_without_logs() -> None:
    policy = QuorumPolicy((BUILDER.public,), threshold=1)
    assert isinstance(policy.decide(PATH_A, [make(BUILDER)]), Trusted)
    assert not policy.wants_logs(make(BUILDER))


def test_require_logs_counts_a_claim_only_with_evidence_of_its_log() -> None:
    claim = make(BUILDER)
    strict = QuorumPolicy((BUILDER.public, ELDER.public), threshold=1, require_logs=True)
    verdict = strict.decide(PATH_A, [claim])
    assert isinstance(verdict, Insufficient)
    assert [i.reason for i in verdict.ignored] == [Reason.UNLOGGED]
    assert strict.wants_logs(claim) and not strict.wants_logs(make(SecretKey.generate("x")))
    shown = dataclasses.replace(strict, logs={claim_digest(claim.claim): frozenset({LOG})})
    assert isinstance(shown.decide(PATH_A, [claim]), Trusted) and not shown.wants_logs(claim)
    # Evidence of another claim of the key's is not evidence of this one.
    other = make(BUILDER, time=1_700_000_001)
    assert isinstance(shown.decide(PATH_A, [other]), Insufficient)


def test_a_key_pinned_to_a_log_counts_only_there() -> None:
    claim = make(BUILDER)
    pinned = QuorumPolicy(
        (BUILDER.public, ELDER.public), threshold=1, lives=(("builder-1", KeyLife(log=LOG)),)
    )
    digest = claim_digest(claim.claim)
    for logs, reason in (
        ({}, Reason.UNLOGGED),
        ({digest: frozenset({OTHER})}, Reason.OTHER_LOG),
    ):
        verdict = dataclasses.replace(pinned, logs=logs).decide(PATH_A, [claim])
        assert isinstance(verdict, Insufficient) and [i.reason for i in verdict.ignored] == [reason]
    both = dataclasses.replace(pinned, logs={digest: frozenset({OTHER, LOG})})
    assert isinstance(both.decide(PATH_A, [claim]), Trusted)
    # A key that is not pinned still counts without a log (require_logs is off).
    assert isinstance(pinned.decide(PATH_A, [make(ELDER)]), Trusted)


def test_the_policy_file_holds_require_logs_and_pins(tmp_path: Path) -> None:
    text = (
        f'trusted = ["{BUILDER.public}", "{ELDER.public}"]\nthreshold = 1\nrequire_logs = true\n'
        f'[keys."builder-1"]\nlog = "{LOG.hex()}"\n'
    )
    policy = policyfile.parse(text)
    assert policy.require_logs and policy.life("builder-1").log == LOG
    assert policyfile.parse(policyfile.dump(policy)) == policy
    for bad, says in (
        ("require_logs = 1\n", "require_logs must be true or false"),
        ('[keys."builder-1"]\nlog = "xyz"\n', "keys.builder-1.log must be a log id"),
        ('[keys."builder-1"]\nlog = "' + "0" * 30 + '"\n', "32 hex digits"),
    ):
        with pytest.raises(PolicyError, match=says):
            policyfile.parse(f'trusted = ["{BUILDER.public}"]\nthreshold = 1\n{bad}')


def test_the_logbook_keeps_evidence_across_a_restart_and_serves_it(tmp_path: Path) -> None:
    with ClaimLog(str(tmp_path / "log"), BUILDER) as log:
        signed = make(BUILDER)
        log.append(signed.claim.encode())
        head = log.head()
        proved = log.prove(signed.claim.encode(), head)
        logged = LoggedClaim(signed, head, proved.index, proved.proof)
    book = Logbook(str(tmp_path))
    assert book.add([logged]) == 1 and book.add([logged]) == 0
    digest = claim_digest(signed.claim)
    assert book.logs[digest] == {log.log_id}
    book.close()
    again = Logbook(str(tmp_path))
    assert again.logs[digest] == {log.log_id}
    assert [LoggedClaim.decode(x) for x in again.logged(digest)] == [logged]
    assert again.logged(b"\0" * 32) == []
    again.close()
    # A write that fails (here: a closed database; a full disk alike) is logged, not
    # raised: the publish or fetch that brought the evidence goes on, and it still counts.
    other = make(BUILDER, time=1_700_000_002)
    with ClaimLog(str(tmp_path / "log"), BUILDER) as log:
        log.append(other.claim.encode())
        head = log.head()
        proved = log.prove(other.claim.encode(), head)
    assert again.add([LoggedClaim(other, head, proved.index, proved.proof)]) == 1
    assert claim_digest(other.claim) in again.logs
