"""The control API's messages: every request and reply survives the socket's encoding,
and what does not decode is refused with a reason, never a traceback."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.daemon import api
from store.source import Source


def _strategy(t: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_strategy(a) for a in typing.get_args(t)))
    if t is type(None):
        return st.none()
    if dataclasses.is_dataclass(t):
        hints = typing.get_type_hints(t)
        return st.builds(
            t, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(t) if f.init}
        )
    if origin is tuple:
        return st.lists(_strategy(typing.get_args(t)[0]), max_size=3).map(tuple)
    if origin is dict:
        k, v = typing.get_args(t)
        return st.dictionaries(_strategy(k), _strategy(v), max_size=3)
    return {
        str: st.text(max_size=20),
        int: st.integers(min_value=0, max_value=1 << 62),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        bytes: st.binary(max_size=40),
    }[t]


def _wire(obj: dict[str, Any]) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@pytest.mark.parametrize("cls", list(api.REQUESTS.values()), ids=lambda c: c.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_every_request_round_trips(cls: type[Any], data: st.DataObject) -> None:
    req = data.draw(_strategy(cls))
    assert api.decode_request(_wire(api.encode_request(req))) == req


@pytest.mark.parametrize(
    "cls",
    list(dict.fromkeys([*api.REPLIES.values(), *api.PROGRESS.values()])),
    ids=lambda c: c.__name__,
)
@settings(max_examples=40)
@given(data=st.data())
def test_every_reply_round_trips(cls: type[Any], data: st.DataObject) -> None:
    reply = data.draw(_strategy(cls))
    assert api.decode(cls, _wire(api.encode(reply))) == reply


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"op": "format"}, "unknown request 'format'"),
        ([1, 2], "unknown request None"),
        ({"op": "fetch"}, "FetchRequest: store_path is missing"),
        ({"op": "fetch", "store_path": 7}, "expected str, got int"),
        ({"op": "fetch", "store_path": "x", "closure": 1}, "expected bool, got int"),
        ({"op": "publish", "source": "dir"}, "Source: expected a map"),
        ({"op": "publish", "source": {"references": "a"}}, "expected a list"),
    ],
)
def test_a_request_that_does_not_decode_says_why(raw: object, problem: str) -> None:
    with pytest.raises(api.ApiError, match=problem.replace("(", r"\(")):
        api.decode_request(raw)


def test_a_request_may_leave_out_what_has_a_default() -> None:
    assert api.decode_request({"op": "publish", "source": {"path": "/t"}}) == api.PublishRequest(
        Source(path="/t")
    )


def test_every_request_has_a_reply_type() -> None:
    assert set(api.REPLIES) == set(api.REQUESTS.values())
