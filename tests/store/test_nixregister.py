"""The `nix-store --register-validity --hash-given` text: round trips and strict
reading. Nix 2.8 registering it is tested with ferry realise (tests/ondemand/test_realise.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import nixregister
from store.hash import Hash
from store.nixcli import PathInfo
from store.nixregister import RegistrationError
from store.path import StorePath
from tests.store.test_narinfo import paths, sha256

infos = st.builds(
    PathInfo,
    paths,
    sha256,
    st.integers(0, 2**63),
    st.lists(paths, max_size=5, unique=True).map(tuple),
    st.none() | paths,
)


@given(st.lists(infos, max_size=5))
def test_round_trip(batch: list[PathInfo]) -> None:
    assert nixregister.decode(nixregister.encode(batch), "/nix/store") == batch


@given(st.binary(max_size=300))
def test_junk_is_only_ever_a_registration_error(raw: bytes) -> None:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return
    try:
        nixregister.decode(text.encode(), "/nix/store")
    except RegistrationError:
        pass


def test_a_record_cut_short_is_refused() -> None:
    ref = StorePath.parse("/nix/store/" + "b" * 32 + "-dep-1.0")
    info = PathInfo(
        StorePath.parse("/nix/store/" + "a" * 32 + "-top-1.0"),
        Hash.sha256(bytes(32)),
        5,
        (ref,),
        None,
    )
    text = nixregister.encode([info])
    assert text.endswith(f"1\n{ref}\n".encode())
    with pytest.raises(RegistrationError, match="ends inside"):
        nixregister.decode(text[: -len(f"{ref}\n")], "/nix/store")
