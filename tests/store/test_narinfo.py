from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.hash import Hash
from store.narinfo import NarInfo, NarInfoError, NixCacheInfo
from store.path import StorePath
from tests.store.test_path import hash_parts, names

paths = st.builds(StorePath, st.just("/nix/store"), hash_parts, names)
sha256 = st.binary(min_size=32, max_size=32).map(Hash.sha256)
field_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
sigs = st.builds(lambda k, v: f"{k}:{v}", st.text("abc-.0123", min_size=1, max_size=12), field_text)

narinfos = st.builds(
    NarInfo,
    store_path=paths,
    url=field_text,
    nar_hash=sha256,
    nar_size=st.integers(1, 2**63),
    references=st.lists(paths, max_size=5).map(tuple),
    compression=st.sampled_from(["none", "xz", "zstd", "bzip2"]),
    file_hash=st.none() | sha256,
    file_size=st.none() | st.integers(0, 2**63),
    deriver=st.none() | paths,
    system=st.none() | st.sampled_from(["x86_64-linux", "aarch64-linux"]),
    sigs=st.lists(sigs, max_size=4).map(tuple),
    ca=st.none() | st.just("fixed:r:sha256:" + "0" * 52),
)


@given(narinfos)
def test_round_trip(info: NarInfo) -> None:
    assert NarInfo.decode(info.encode()) == info


def test_seed_post_example() -> None:
    text = """StorePath: /nix/store/r5sjd57x0r07bwgipryaxqdkx1gglhiy-libidn2-2.3.2
URL: nar/010zh5j819qyz6zai6h2hn3d7i406g00m2g4g62bq7m8g91553yb.nar.xz
Compression: xz
FileHash: sha256:010zh5j819qyz6zai6h2hn3d7i406g00m2g4g62bq7m8g91553yb
FileSize: 63248
NarHash: sha256:1npw0jz1cw4k9x25f2vsdhsa5cf9568j46bpz2768a1izqj5n9lf
NarSize: 260816
References: 0z7sqj4pilbqyp45ix5b0mdgn9xlb024-libunistring-0.9.10 r5sjd57x0r07bwgipryaxqdkx1gglhiy-libidn2-2.3.2
Deriver: 0n91syjwrhmng41f8d23ad0sl4a6ic4g-libidn2-2.3.2.drv
Sig: cache.nixos.org-1:abc=
Sig: other-1:def=
"""
    info = NarInfo.decode(text)
    assert info.encode() == text
    assert info.sigs == ("cache.nixos.org-1:abc=", "other-1:def=")
    assert [r.name for r in info.references] == ["libunistring-0.9.10", "libidn2-2.3.2"]
    assert info.fingerprint() == (
        "1;/nix/store/r5sjd57x0r07bwgipryaxqdkx1gglhiy-libidn2-2.3.2;"
        "sha256:1npw0jz1cw4k9x25f2vsdhsa5cf9568j46bpz2768a1izqj5n9lf;260816;"
        "/nix/store/0z7sqj4pilbqyp45ix5b0mdgn9xlb024-libunistring-0.9.10,"
        "/nix/store/r5sjd57x0r07bwgipryaxqdkx1gglhiy-libidn2-2.3.2"
    )


def test_nix_written_narinfos_round_trip(nix_closure) -> None:
    found = list(Path(nix_closure.cache).glob("*.narinfo"))
    assert len(found) == len(nix_closure.paths) == 2
    for f in found:
        text = f.read_text()
        info = NarInfo.decode(text)
        assert info.encode() == text, f"re-rendered {f.name} differs"
        assert len(info.sigs) == 2  # two keys signed every path
        assert str(info.store_path) in nix_closure.paths
    top = NarInfo.decode(
        (Path(nix_closure.cache) / (nix_closure.top[11:43] + ".narinfo")).read_text()
    )
    assert [str(r) for r in top.references] == [
        p for p in nix_closure.paths if p != nix_closure.top
    ]
    assert top.deriver is not None and top.deriver.name == "top-1.0.drv"


def test_lenient_like_nix() -> None:
    # Any order, unknown fields kept, missing Compression means bzip2, SRI NarHash.
    text = (
        "NarSize: 5\nFuture: yes\nNarHash: sha256-" + "A" * 43 + "=\n"
        "URL: nar/x.nar\nStorePath: /nix/store/" + "a" * 32 + "-x\nReferences:\n"
    )
    info = NarInfo.decode(text)
    assert (
        info.compression == "bzip2" and info.extra == (("Future", "yes"),) and info.references == ()
    )
    assert "References: \n" in info.encode()


@pytest.mark.parametrize(
    "text, message",
    [
        ("URL: x\nNarHash: sha256:" + "0" * 52 + "\nNarSize: 1\n", "no StorePath"),
        (
            "StorePath: /nix/store/bad\nURL: x\nNarHash: sha256:" + "0" * 52 + "\nNarSize: 1\n",
            "is not <32",
        ),
        (
            "StorePath: /nix/store/" + "a" * 32 + "-x\nURL: x\nNarHash: sha256:zz\nNarSize: 1\n",
            "wrong length",
        ),
        (
            "StorePath: /nix/store/"
            + "a" * 32
            + "-x\nURL: x\nNarHash: sha256:"
            + "0" * 52
            + "\nNarSize: -1\n",
            "not a number",
        ),
        (
            "StorePath: /nix/store/"
            + "a" * 32
            + "-x\nURL: x\nNarHash: sha256:"
            + "0" * 52
            + "\nNarSize: 0\n",
            "NarSize is 0",
        ),
        ("StorePath: /nix/store/" + "a" * 32 + "-x\nno colon here\n", "line 2"),
        (
            "StorePath: /nix/store/" + "a" * 32 + "-x\nStorePath: /nix/store/" + "a" * 32 + "-x\n",
            "twice",
        ),
    ],
)
def test_rejects(text: str, message: str) -> None:
    with pytest.raises(NarInfoError, match=message):
        NarInfo.decode(text)


@given(
    st.builds(
        NixCacheInfo,
        st.sampled_from(["/nix/store", "/gnu/store"]),
        st.booleans(),
        st.integers(0, 100),
    )
)
def test_cache_info_round_trip(info: NixCacheInfo) -> None:
    assert NixCacheInfo.decode(info.encode()) == info


def test_cache_info_default_and_nix_written(nix_closure) -> None:
    assert NixCacheInfo().encode() == "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    written = NixCacheInfo.decode((Path(nix_closure.cache) / "nix-cache-info").read_text())
    assert written.store_dir == "/nix/store"
