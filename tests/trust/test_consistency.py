"""Heads of one log of different sizes, shown consistent by their builder (RFC 9162
consistency proofs): an honest log always can; a forked one answers with a head that
contradicts one the witness holds, which is a FORK anyone can check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from store.hash import Hash
from store.path import StorePath
from trust.claimlog import ClaimLog
from trust.key import SecretKey
from trust.treehead import SignedTreeHead
from trust.witness import Caught, Witness

from .claims import EVIL, GOOD, STORE, make

BUILDER = SecretKey.generate("builder-1")


def _grow(log: ClaimLog, n: int, nar_hash: Hash = GOOD) -> None:
    for _ in range(n):
        i = len(log)
        path = StorePath(STORE, f"{i:032d}", f"pkg-{i}")
        log.append(make(BUILDER, path=path, nar_hash=nar_hash).claim.encode())


def _answer(
    log: ClaimLog, old: int, new: int
) -> tuple[SignedTreeHead, SignedTreeHead, list[bytes]]:
    """What the builder serves for CONSISTENT old new (node.daemon.witness)."""
    return log.head(size=old), log.head(size=new), log.consistency(old, new)


def test_an_honest_logs_heads_are_shown_consistent_in_any_order(tmp_path: Path) -> None:
    w = Witness()
    with ClaimLog(str(tmp_path), BUILDER) as log:
        heads = {}
        for size in (3, 5, 8, 13):
            _grow(log, size - len(log))
            heads[size] = log.head()
        which = heads[3].log
        for size in (8, 3, 13, 5):  # as gossip brings them
            assert w.observe_head(heads[size]) is None
        asked = []
        while (pair := w.to_prove(which)) is not None:
            asked.append(pair)
            assert w.settle(which, pair[0], pair[1], *_answer(log, *pair)) is None
            assert len(asked) < 10
    newest = w.newest(which)
    assert newest is not None and newest.head.size == 13 and not w.caught
    assert {size for pair in asked for size in pair} == {3, 5, 8, 13}


def test_a_forked_log_is_caught_by_the_builders_own_answer(tmp_path: Path) -> None:
    with ClaimLog(str(tmp_path / "one"), BUILDER) as one:
        _grow(one, 2)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    w = Witness()
    with (
        ClaimLog(str(tmp_path / "one"), BUILDER) as one,
        ClaimLog(str(tmp_path / "two"), BUILDER) as two,
    ):
        _grow(one, 3)  # branch one: 5 leaves, shown to this witness
        _grow(two, 5, nar_hash=EVIL)  # branch two: 7 leaves that differ from leaf 2 on
        assert w.observe_head(one.head()) is None
        assert w.observe_head(two.head()) is None  # no size, no index in common
        which = one.head().log
        assert w.to_prove(which) == (5, 7)
        # However the builder answers from branch two, its head of 5 leaves is not the one
        # it signed for this witness: a FORK, which anyone can check.
        caught = w.settle(which, 5, 7, *_answer(two, 5, 7))
        assert isinstance(caught, Caught) and caught.kind == "FORK"
        # From branch one it cannot reach 7 leaves with the head it signed elsewhere.
        _grow(one, 2)
        again = Witness()
        again.observe_head(one.head(size=5))
        again.observe_head(two.head())
        caught = again.settle(which, 5, 7, *_answer(one, 5, 7))
        assert isinstance(caught, Caught) and caught.kind == "FORK"


def test_an_answer_that_is_not_one_is_refused_and_convicts_nobody(tmp_path: Path) -> None:
    w = Witness()
    with ClaimLog(str(tmp_path), BUILDER) as log:
        _grow(log, 3)
        small = log.head()
        _grow(log, 4)
        big = log.head()
        w.observe_head(small)
        w.observe_head(big)
        which = big.log
        a, b, proof = _answer(log, 3, 7)
        with pytest.raises(ValueError, match="does not verify"):
            w.settle(which, 3, 7, a, b, [bytes(32)] * len(proof))
        with pytest.raises(ValueError, match="not a head of size"):
            w.settle(which, 3, 7, b, a, proof)
        with pytest.raises(ValueError, match="not a head of size"):
            w.settle(which, 3, 7, log.head(size=4), b, proof)
    assert not w.caught and w.to_prove(which) == (3, 7)


def test_the_heads_of_a_nodes_own_log_are_never_asked_about(tmp_path: Path) -> None:
    w = Witness()
    with ClaimLog(str(tmp_path), BUILDER) as log:
        for _ in range(3):
            _grow(log, 1)
            head = log.head()
            assert w.observe_head(head) is None
            w.own(head)
    assert w.to_prove(head.log) is None and w.newest(head.log) == head
