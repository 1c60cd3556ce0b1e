"""The policy file: TOML in, precise errors (file, line, field) out."""

from __future__ import annotations

from pathlib import Path

import pytest

from trust import policyfile
from trust.key import SecretKey
from trust.policy import OnConflict, PolicyError, QuorumPolicy

KEYS = [SecretKey.generate(f"builder-{n}").public for n in "abc"]


def test_round_trip(tmp_path: Path) -> None:
    policy = QuorumPolicy(tuple(KEYS), 2, OnConflict.MAJORITY)
    (tmp_path / "p.toml").write_text(policyfile.dump(policy))
    assert policyfile.load(str(tmp_path / "p.toml")) == policy


def test_defaults_to_refuse() -> None:
    text = f'trusted = ["{KEYS[0]}"]\nthreshold = 1\n'
    assert policyfile.parse(text).on_conflict is OnConflict.REFUSE


def _doc(trusted: str = "", threshold: str = "threshold = 2", extra: str = "") -> str:
    keys = trusted or "".join(f'  "{k}",\n' for k in KEYS)
    return f"# quorum\ntrusted = [\n{keys}]\n{threshold}\n{extra}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            _doc(trusted=f'  "{KEYS[0]}",\n  "builder-x:AAAA",\n'),
            r"p.toml line 4: trusted\[1\]: public key 'builder-x' has 3 bytes",
        ),
        (
            _doc(trusted=f'  "{KEYS[0]}",\n  "nocolon",\n'),
            r"p.toml line 4: trusted\[1\]: .*no 'name:' prefix",
        ),
        (_doc(trusted='  "k:!!!",\n'), r"line 3: trusted\[0\]: .*not valid base64"),
        (_doc(trusted="  42,\n"), r"line 2: trusted\[0\] must be a string"),
        (
            _doc(threshold="threshold = 4"),
            r"line 7: threshold must be a whole number from 1 to 3 .* not 4",
        ),
        (_doc(threshold="threshold = 0"), r"line 7: threshold .* not 0"),
        (_doc(threshold="threshold = '2'"), r"line 7: threshold must be a whole number, not '2'"),
        (_doc(threshold="threshold = 1.5"), r"line 7: threshold must be a whole number, not 1.5"),
        (_doc(threshold=""), r"p.toml: missing field 'threshold'"),
        (
            _doc(extra='on_conflict = "vote"'),
            r"line 8: on_conflict must be 'refuse' or 'majority', not 'vote'",
        ),
        (_doc(extra="treshold = 2"), r"line 8: unknown field 'treshold'"),
        (
            _doc(trusted=f'  "{KEYS[0]}",\n  "{KEYS[0]}",\n'),
            r"line 4: trusted\[1\]: two trusted keys are named 'builder-a'",
        ),
        ('trusted = "builder-a:AAAA"\nthreshold = 1', r"line 1: 'trusted' must be a list"),
        ("trusted = [\nthreshold = 2", r"p.toml: not valid TOML: .*line 2"),
        ("threshold = 1", r"missing field 'trusted'"),
    ],
)
def test_errors_name_the_line_and_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policyfile.parse(text, "p.toml")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"none\.toml: no such file"):
        policyfile.load(str(tmp_path / "none.toml"))
    with pytest.raises(PolicyError, match="is a directory"):
        policyfile.load(str(tmp_path))
    (tmp_path / "bin.toml").write_bytes(b"trusted = [\xff]")
    with pytest.raises(PolicyError, match="not UTF-8"):
        policyfile.load(str(tmp_path / "bin.toml"))
