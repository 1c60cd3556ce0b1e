"""Decoding msgpack that a peer sent, within bounds: every format in trust/ takes
canonical bytes only, and no more than its own limits let a peer make it parse."""

from __future__ import annotations

import msgpack


def unpack(
    data: bytes,
    error: type[ValueError],
    what: str,
    *,
    limit: int,
    max_array: int,
    max_bin: int | None = None,
    max_str: int | None = None,
) -> object:
    """`data` decoded (no maps, no extension types, strings and byte strings at most
    `limit` long unless given); `error` if it is longer than `limit` or not msgpack."""
    if len(data) > limit:
        raise error(f"{what} of {len(data):,} bytes exceeds the {limit:,}-byte limit")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limit if max_str is None else max_str,
            max_bin_len=limit if max_bin is None else max_bin,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise error(f"{what} is not valid msgpack ({type(e).__name__})") from None
