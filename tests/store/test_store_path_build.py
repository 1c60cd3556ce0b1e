import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import build, nixcli, nixdb
from store.path import StorePath


def test_manifest_of_a_nix_built_path(nix_closure) -> None:
    top = StorePath.decode(nix_closure.top)
    m = build.from_store_path(top, store=str(nix_closure.store))
    info = nixcli.path_info(top, str(nix_closure.store))
    assert (m.nar_hash, m.nar_size) == (info.nar_hash, info.nar_size)
    assert [str(r) for r in m.references] == [p for p in nix_closure.paths if p != nix_closure.top]
    assert m.deriver is not None and m.deriver.name == "top-1.0.drv"
    # The same through the `local?root=` spelling of the store.
    assert build.from_store_path(top, store=f"local?root={nix_closure.store}") == m


def test_tampered_store_path_is_refused(nix, tmp_path: Path) -> None:
    tree = tmp_path / "victim"
    tree.mkdir()
    (tree / "f").write_text("original")
    store = tmp_path / "s"
    sp = StorePath.decode(
        nix.run("nix-store", "--store", str(store), "--add", str(tree)).decode().strip()
    )
    physical = Path(nixcli.physical_path(sp, str(store)))
    os.chmod(physical, 0o755)
    os.chmod(physical / "f", 0o644)
    (physical / "f").write_text("modified")
    with pytest.raises(build.ModifiedStorePath, match="repair"):
        build.from_store_path(sp, store=str(store))


def test_unknown_path_and_remote_store() -> None:
    with pytest.raises(nixcli.NixError, match="only local stores"):
        nixcli.store_root("https://cache.example")
    assert nixcli.store_root("/tmp/x/") == "/tmp/x" and nixcli.store_root(None) == ""


def test_invalid_path_is_reported_by_nix(nix, tmp_path: Path) -> None:
    sp = StorePath.decode("/nix/store/" + "a" * 32 + "-absent")
    with pytest.raises(nixcli.NixError, match="is not a valid path in the Nix store at"):
        nixcli.path_info(sp, str(tmp_path / "empty-store"))


@given(st.data())
def test_a_closure_lists_every_path_after_its_references(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 30))
    paths = [f"/nix/store/{i:032d}-p{i}" for i in range(n)]
    # A DAG: a path refers only to paths of higher index (and maybe to itself).
    refs = {
        p: data.draw(st.lists(st.sampled_from(paths[i:]), unique=True)) for i, p in enumerate(paths)
    }
    order = nixdb.references_first(refs)
    assert sorted(order) == sorted(paths)
    for p, rs in refs.items():
        assert all(order.index(r) <= order.index(p) for r in rs)
