"""Messages that are msgpack arrays whose first item names their kind, one per frame
(p2p.frame): the shape of the relay and punch protocols (p2p.relay, p2p.punch).

Each message class has a `KIND`, `fields()` (the items after the kind) and a static
`parse(items)` that checks them; `decode` checks the array's shape and count first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import msgpack

from p2p import frame


class Tagged(Protocol):
    KIND: ClassVar[int]

    def fields(self) -> list[object]: ...


def encode(message: Tagged, cap: int) -> bytes:
    return frame.encode(msgpack.packb([message.KIND, *message.fields()]), cap)


def decode(
    payload: bytes,
    kinds: Mapping[int, tuple[Any, int]],
    error: type[ValueError],
    *,
    max_items: int,
    what: str,
) -> Any:
    """The message `payload` holds: `kinds` maps a kind to (its class, its field count);
    anything else raises `error`."""
    try:
        value = msgpack.unpackb(payload, strict_map_key=True, max_array_len=max_items)
    except Exception as e:  # noqa: BLE001 - msgpack raises several kinds
        raise error(f"not msgpack: {e}") from None
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise error(f"a {what} message is an array whose first item is its kind")
    kind, *rest = value
    if kind not in kinds:
        raise error(f"unknown {what} message kind {kind}")
    cls, arity = kinds[kind]
    if len(rest) != arity:
        raise error(f"a {cls.__name__.upper()} has {arity} fields, not {len(rest)}")
    return cls.parse(rest)
