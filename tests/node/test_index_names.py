"""Finding recorded paths by the start of their name (candidate bases for a diff)."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from node.local.index import Index

# Nix's name characters, with the ones LIKE would treat specially among them (and `%`,
# `\`, which Nix forbids, in case a store was written by something laxer).
NAME = st.text(alphabet="aAbB_-.%\\1+", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(NAME, max_size=12), prefix=NAME)
def test_store_paths_named_is_a_prefix_match(names: list[str], prefix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(str(Path(tmp) / "index.sqlite"))
        try:
            with index.transaction():
                m = index.add_manifest(b"\0" * 32, b"m", [])
                paths = [f"/nix/store/{i:032d}-{n}" for i, n in enumerate(names)]
                for p in paths:
                    index.put_path(p, m, "sha256:x", 1, None, [], 0)
            got = index.store_paths_named("/nix/store", prefix)
        finally:
            index.close()
    assert sorted(got) == sorted(p for p in paths if p[44:].startswith(prefix))


def test_names_are_found_by_the_index_old_stores_gain_it(tmp_path: Path) -> None:
    db = str(tmp_path / "index.sqlite")
    Index(db).close()
    raw = sqlite3.connect(db)
    raw.execute("DROP INDEX paths_by_name")  # as a store made before it
    raw.close()
    index = Index(db)
    try:
        plan = index.db.execute(
            "EXPLAIN QUERY PLAN SELECT store_path FROM paths "
            "WHERE substr(store_path, 45) >= ? AND substr(store_path, 45) < ?",
            ("a", "b"),
        ).fetchall()
    finally:
        index.close()
    assert "USING INDEX paths_by_name" in str(plan)  # not a scan per path of a closure


def test_a_transaction_inside_another_is_part_of_it(tmp_path: Path) -> None:
    index = Index(str(tmp_path / "index.sqlite"))
    try:
        m = b"\1" * 32
        try:
            with index.transaction():
                with index.transaction():
                    index.add_manifest(m, b"m", [])
                raise RuntimeError("the outer one fails after the inner one ended")
        except RuntimeError:
            pass
        assert index.manifest(m) is None  # rolled back with the outer one
        with index.transaction():
            with index.transaction():
                index.add_manifest(m, b"m", [])
            assert index.db.in_transaction  # the inner one did not commit
        assert not index.db.in_transaction and index.manifest(m) == b"m"
    finally:
        index.close()


@settings(max_examples=40, deadline=None)
@given(
    claimed=st.lists(st.sampled_from("0123abcd"), max_size=10),
    asked=st.lists(st.sampled_from("0123abcd"), max_size=6),
)
def test_claims_of_many_hashes_are_the_claims_of_each(claimed: list[str], asked: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(str(Path(tmp) / "index.sqlite"))
        try:
            with index.transaction():
                for i, c in enumerate(claimed):
                    index.add_claim(f"/nix/store/{c * 32}-p{i % 3}", f"k{i}", b"claim %d" % i)
            many = index.claims_by_hashes([c * 32 for c in asked])
            assert {h: many.get(h, []) for h in (c * 32 for c in asked)} == {
                c * 32: index.claims_by_hash(c * 32) for c in asked
            }
        finally:
            index.close()
