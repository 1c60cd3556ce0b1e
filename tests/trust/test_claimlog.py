"""A builder's claim log on disk: appends survive a reopen, a torn tail from a crash is
dropped, and what it proves verifies against the heads it signs."""

from __future__ import annotations

from pathlib import Path

from trust import merkle
from trust.claimlog import ClaimLog
from trust.key import SecretKey

KEY = SecretKey.generate("builder-1")


def test_a_log_proves_its_leaves_and_its_growth_across_a_reopen(tmp_path: Path) -> None:
    log = ClaimLog(str(tmp_path), KEY)
    for i in range(10):
        assert log.append(b"claim %d" % i) == i
    assert log.append(b"claim 3") == 3  # logged once
    old = log.head(1_700_000_000)
    log.close()
    log = ClaimLog(str(tmp_path), KEY)
    assert len(log) == 10 and log.tree.root() == old.head.root
    for i in range(10, 25):
        log.append(b"claim %d" % i)
    new = log.head()
    assert new.valid() and new.head.size == 25
    # A batch: logged once each, with one fsync; what was logged keeps its index.
    assert log.append_many([b"claim 25", b"claim 3", b"claim 25"]) == [25, 3, 25]
    assert len(log) == 26
    assert merkle.verify_consistency(10, 25, old.head.root, new.head.root, log.consistency(10, 25))
    proved = log.prove(b"claim 17", new)
    assert merkle.verify_inclusion(
        merkle.leaf_hash(b"claim 17"), proved.index, 25, proved.proof, new.head.root
    )
    log.close()


def test_a_record_a_crash_cut_short_is_dropped(tmp_path: Path) -> None:
    log = ClaimLog(str(tmp_path), KEY)
    for i in range(3):
        log.append(b"claim %d" % i)
    head = log.head()
    log.close()
    with open(log.path, "ab") as f:
        f.write(b"\x00\x00\x01\x00half a rec")  # a length and part of its bytes
    with ClaimLog(str(tmp_path), KEY) as log:
        assert len(log) == 3 and log.tree.root() == head.head.root
        assert Path(log.path).stat().st_size == sum(4 + len(b"claim %d" % i) for i in range(3))
        assert log.append(b"claim 3") == 3
