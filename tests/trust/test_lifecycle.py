"""Keys' lives in a policy: rotation (a successor takes over at a time; the old key's
earlier claims still count; the two are one builder) and revocation (claims dated from
then on never count), in the policy, its file, and `ferry trust rotate|revoke`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from tests.cli import ferry
from trust import claim, keyfile, policyfile
from trust.claim import SignedClaim
from trust.key import SecretKey
from trust.policy import Insufficient, KeyLife, PolicyError, QuorumPolicy, Reason, Trusted

from .claims import PATH_A, make

OLD, NEW, OTHER = (SecretKey.generate(n) for n in ("builder-1", "builder-1b", "builder-2"))
SWITCH = 1_800_000_000


def _rotated(threshold: int = 1) -> QuorumPolicy:
    return QuorumPolicy(
        (OLD.public, NEW.public, OTHER.public),
        threshold,
        lives=(
            ("builder-1", KeyLife(not_after=SWITCH, successor="builder-1b")),
            ("builder-1b", KeyLife(not_before=SWITCH)),
        ),
    )


def test_after_a_rotation_the_successor_counts_and_the_old_keys_earlier_claims_still_do() -> None:
    policy = _rotated()
    assert isinstance(policy.decide(PATH_A, [make(OLD, time=SWITCH - 1)]), Trusted)
    assert isinstance(policy.decide(PATH_A, [make(NEW, time=SWITCH)]), Trusted)
    late = policy.decide(PATH_A, [make(OLD, time=SWITCH)])
    assert isinstance(late, Insufficient)
    assert [i.reason for i in late.ignored] == [Reason.OUT_OF_WINDOW]
    early = policy.decide(PATH_A, [make(NEW, time=SWITCH - 1)])
    assert isinstance(early, Insufficient)
    assert [i.reason for i in early.ignored] == [Reason.OUT_OF_WINDOW]


def test_a_key_and_its_successor_are_one_builder() -> None:
    policy = _rotated(threshold=2)
    both = [make(OLD, time=SWITCH - 1), make(NEW, time=SWITCH + 1)]
    verdict = policy.decide(PATH_A, both)
    assert isinstance(verdict, Insufficient) and verdict.have == 1, verdict
    verdict = policy.decide(PATH_A, [*both, make(OTHER)])
    assert isinstance(verdict, Trusted) and set(verdict.signers) == {"builder-1", "builder-2"}
    with pytest.raises(PolicyError, match="more than the 2 builders"):
        QuorumPolicy(_rotated().trusted, 3, lives=_rotated().lives)


def test_a_revoked_key_counts_for_nothing_from_its_revocation() -> None:
    policy = QuorumPolicy(
        (OLD.public, OTHER.public), 1, lives=(("builder-2", KeyLife(revoked=SWITCH)),)
    )
    assert isinstance(policy.decide(PATH_A, [make(OTHER, time=SWITCH - 1)]), Trusted)
    for when in (SWITCH, SWITCH + 10**6):
        verdict = policy.decide(PATH_A, [make(OTHER, time=when)])
        assert isinstance(verdict, Insufficient)
        assert [i.reason for i in verdict.ignored] == [Reason.REVOKED]


@pytest.mark.parametrize(
    ("lives", "message"),
    [
        ((("builder-9", KeyLife()),), "no trusted key is named"),
        ((("builder-1", KeyLife(successor="builder-9")),), "must be another trusted key"),
        ((("builder-1", KeyLife(successor="builder-1")),), "must be another trusted key"),
        (
            (
                ("builder-1", KeyLife(successor="builder-2")),
                ("builder-1b", KeyLife(successor="builder-2")),
            ),
            "already succeeds",
        ),
        (
            (
                ("builder-1", KeyLife(successor="builder-1b")),
                ("builder-1b", KeyLife(successor="builder-1")),
            ),
            "circle",
        ),
    ],
)
def test_lives_that_make_no_sense_are_refused(
    lives: tuple[tuple[str, KeyLife], ...], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        QuorumPolicy((OLD.public, NEW.public, OTHER.public), 1, lives=lives)


def test_the_policy_file_holds_lives_and_says_what_is_wrong(tmp_path: Path) -> None:
    policy = _rotated()
    again = policyfile.parse(policyfile.dump(policy))
    assert again == policy
    text = policyfile.dump(policy)
    assert '[keys."builder-1"]' in text and "not_after = 2027-01-15T08:00:00Z" in text
    for bad, message in [
        ('\n[keys."builder-1"]\nuntil = 1\n', "unknown field 'until'"),
        ('\n[keys."builder-1"]\nrevoked = 2026-12-01T00:00:00\n', "give the time zone"),
        ('\n[keys."builder-1"]\nrevoked = "soon"\n', "must be a date-time"),
        ('\n[keys."builder-7"]\nrevoked = 2026-12-01T00:00:00Z\n', "no trusted key is named"),
    ]:
        base = policyfile.dump(QuorumPolicy((OLD.public, NEW.public, OTHER.public), 1))
        with pytest.raises(PolicyError, match=message):
            policyfile.parse(base + bad)


def test_ferry_trust_rotate_and_revoke_rewrite_the_policy(tmp_path: Path) -> None:
    for n in ("old", "new", "other"):
        assert ferry("trust", "keygen", f"builder-{n}", "-o", str(tmp_path / n)).returncode == 0
    public = {n: (tmp_path / f"{n}.public").read_text().strip() for n in ("old", "new", "other")}
    pol = tmp_path / "policy.toml"
    pol.write_text(f'trusted = ["{public["old"]}", "{public["other"]}"]\nthreshold = 1\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_bytes(os.urandom(1000))
    sp = "/nix/store/" + "7" * 32 + "-hello-2.12"
    for n in ("old", "new", "other"):
        r = ferry(
            "trust", "claim", str(out), "--key", str(tmp_path / f"{n}.secret"),
            "--store-path", sp, "-o", str(tmp_path / f"{n}.claim"),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr

    def decide(claim: str) -> dict[str, object]:
        r = ferry("trust", "decide", sp, "--policy", str(pol), str(tmp_path / claim), "--json")
        return json.loads(r.stdout)

    assert decide("old.claim")["verdict"] == "trusted"
    # Rotated as of 1970: the old key's claim, signed just now, no longer counts.
    r = ferry(
        "trust", "rotate", "--policy", str(pol), "builder-old", str(tmp_path / "new.public"),
        "--at", "1970-01-01T00:00:00Z",
    )  # fmt: skip
    assert r.returncode == 0 and "builder-old hands over to builder-new" in r.stdout, r.stderr
    assert decide("old.claim")["verdict"] == "insufficient"
    assert decide("new.claim")["verdict"] == "trusted"
    # Revoked the second after it signed its claim (times are whole seconds: "now" could
    # be the claim's own second): that claim still counts, one signed from then on not.
    signed = SignedClaim.decode((tmp_path / "other.claim").read_bytes())
    at = signed.claim.time + 1
    r = ferry("trust", "revoke", "--policy", str(pol), "builder-other", "--at", str(at))
    assert r.returncode == 0 and "builder-other counts for nothing from" in r.stdout
    assert decide("other.claim")["verdict"] == "trusted"
    later = claim.sign(
        dataclasses.replace(signed.claim, time=at),
        keyfile.load_secret(str(tmp_path / "other.secret")),
    )
    (tmp_path / "other-later.claim").write_bytes(later.encode())
    assert decide("other-later.claim")["verdict"] == "insufficient"
    loaded = policyfile.load(str(pol))
    assert dict(loaded.lives)["builder-old"].successor == "builder-new"
    # Bad input: one line, exit status 3.
    for argv in (
        ["revoke", "--policy", str(pol), "builder-nobody"],
        ["revoke", "--policy", str(pol), "builder-other", "--at", "next tuesday"],
        ["rotate", "--policy", str(pol), "builder-old", "not-a-key"],
    ):
        r = ferry("trust", *argv)
        assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
