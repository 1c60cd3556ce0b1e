"""RFC 9162 Merkle trees: the roots of Certificate Transparency's test vectors, and every
inclusion and consistency proof verifying, and nothing altered verifying."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trust.merkle import (
    EMPTY_ROOT,
    Tree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# certificate-transparency-go's merkle test vectors (RFC 6962 hashing, which RFC 9162
# keeps): eight leaves and the root after each.
CT_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
BIG = 3000


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from the RFC's definition, on the leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def _tree(n: int) -> Tree:
    return Tree(leaf_hash(i.to_bytes(4, "big")) for i in range(n))


@pytest.fixture(scope="module")
def big() -> Tree:
    return _tree(BIG)


def test_roots_match_certificate_transparencys_vectors() -> None:
    t = Tree()
    assert t.root() == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for leaf, root in zip(CT_LEAVES, CT_ROOTS, strict=True):
        t.append(bytes.fromhex(leaf))
        assert t.root().hex() == root


def test_every_size_to_thousands_proves_its_edges_and_middle(big: Tree) -> None:
    """Every tree size to BIG: the first, middle and last leaf's inclusion, and
    consistency from the size before and from half the size."""
    for n in range(1, BIG + 1):
        root = big.root(n)
        for i in {0, n // 2, n - 1}:
            assert verify_inclusion(big.leaves[i], i, n, big.inclusion(i, n), root), (i, n)
        for m in {n - 1, n // 2}:
            assert verify_consistency(m, n, big.root(m), root, big.consistency(m, n)), (m, n)


def test_every_proof_of_every_small_tree_verifies() -> None:
    """All sizes to 128: every leaf's inclusion, every pair of sizes' consistency."""
    t = _tree(128)
    for n in range(129):
        root = t.root(n)
        assert root == _reference_root(t.leaves[:n])
        for i in range(n):
            assert verify_inclusion(t.leaves[i], i, n, t.inclusion(i, n), root)
        for m in range(n + 1):
            assert verify_consistency(m, n, t.root(m), root, t.consistency(m, n)), (m, n)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_inclusion_verifies_in_trees_of_thousands_and_nothing_altered_does(
    big: Tree, data: st.DataObject
) -> None:
    n = data.draw(st.integers(1, BIG), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    root, proof, leaf = big.root(n), big.inclusion(i, n), big.leaves[i]
    assert verify_inclusion(leaf, i, n, proof, root)
    assert not verify_inclusion(leaf_hash(b"another"), i, n, proof, root)
    assert not verify_inclusion(leaf, i, n, proof, leaf_hash(b"another root"))
    if n > 1:
        assert not verify_inclusion(leaf, (i + 1) % n, n, proof, root)
    # (The same path can fit another size with the same root: a signed head binds the
    # size to its root, and a proof is checked against a head.)
    if n + 1 <= BIG:
        assert not verify_inclusion(leaf, i, n + 1, proof, big.root(n + 1))
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="altered")
        bit = data.draw(st.integers(0, 255), label="bit")
        altered = list(proof)
        altered[j] = bytes(
            b ^ (1 << (bit % 8)) if k == bit // 8 else b for k, b in enumerate(proof[j])
        )
        assert not verify_inclusion(leaf, i, n, altered, root)
        assert not verify_inclusion(leaf, i, n, proof[:-1], root)
    assert not verify_inclusion(leaf, i, n, [*proof, leaf], root)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistency_verifies_between_any_two_sizes_and_nothing_altered_does(
    big: Tree, data: st.DataObject
) -> None:
    n = data.draw(st.integers(1, BIG), label="new")
    m = data.draw(st.integers(1, n), label="old")
    old, new, proof = big.root(m), big.root(n), big.consistency(m, n)
    assert verify_consistency(m, n, old, new, proof)
    assert not verify_consistency(m, n, leaf_hash(b"forked"), new, proof)
    assert not verify_consistency(m, n, old, leaf_hash(b"forked"), proof)
    if m < n:
        # A tree that differs anywhere in its first m leaves is not consistent.
        forked = Tree(big.leaves[:n])
        at = data.draw(st.integers(0, m - 1), label="forked leaf")
        forked.leaves[at] = leaf_hash(b"rewritten")
        assert not verify_consistency(m, n, forked.root(m), new, proof)
        assert not verify_consistency(m, n, old, forked.root(n), forked.consistency(m, n))
        j = data.draw(st.integers(0, len(proof) - 1), label="altered")
        altered = list(proof)
        altered[j] = leaf_hash(altered[j])
        assert not verify_consistency(m, n, old, new, altered)
        assert not verify_consistency(m, n, old, new, proof[:-1])
        assert not verify_consistency(m, n, old, new, [*proof, new])
        if m < n - 1:
            assert not verify_consistency(m, n - 1, old, big.root(n - 1), proof)


def test_the_empty_and_equal_cases() -> None:
    t = _tree(5)
    assert verify_consistency(0, 5, EMPTY_ROOT, t.root(), [])
    assert not verify_consistency(0, 5, t.root(1), t.root(), [])
    assert verify_consistency(5, 5, t.root(), t.root(), [])
    assert not verify_consistency(5, 5, t.root(), t.root(), [t.root()])
    assert not verify_consistency(3, 5, t.root(3), t.root(), [])
    assert not verify_inclusion(t.leaves[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ValueError):
        t.inclusion(5)
    with pytest.raises(ValueError):
        t.consistency(6, 5)
