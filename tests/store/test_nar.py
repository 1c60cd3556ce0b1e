"""NAR codec: round trips, and each rule the parser enforces, with offset and rule."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store import nar
from store.nar import NarError, NarRule
from tests import trees


def s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)


def raw(*tokens: bytes | int) -> bytes:
    """A NAR from tokens: bytes become strings, ints raw u64 (for contents sizes)."""
    return b"".join(struct.pack("<Q", t) if isinstance(t, int) else s(t) for t in tokens)


def reg(data: bytes) -> bytes:
    return (
        raw(b"(", b"type", b"regular", b"contents", len(data))
        + data
        + b"\0" * (-len(data) % 8)
        + s(b")")
    )


def entry(name: bytes, node: bytes) -> bytes:
    return raw(b"entry", b"(", b"name", name, b"node") + node + s(b")")


def directory(*entries: bytes) -> bytes:
    return raw(b"(", b"type", b"directory") + b"".join(entries) + s(b")")


def link(target: bytes) -> bytes:
    return raw(b"(", b"type", b"symlink", b"target", target, b")")


def archive(node: bytes) -> bytes:
    return s(b"nix-archive-1") + node


def parse_error(data: bytes) -> NarError:
    with pytest.raises(NarError) as e:
        nar.parse_bytes(data)
    return e.value


@given(trees.trees())
def test_round_trip(tree: trees.Node) -> None:
    evs = trees.events(tree)
    data = nar.encode_bytes(evs)
    assert nar.parse_bytes(data) == evs


@given(trees.trees(), st.integers(1, 97))
def test_any_feed_split_gives_same_events(tree: trees.Node, step: int) -> None:
    data = nar.encode_bytes(trees.events(tree))
    parser = nar.NarParser()
    got: list[nar.NarEvent] = []
    for i in range(0, len(data), step):
        got += parser.feed(data[i : i + step])
    parser.close()
    contents = b"".join(bytes(e.data) for e in got if isinstance(e, nar.Contents))
    want = trees.events(tree)
    assert [e for e in got if not isinstance(e, nar.Contents)] == [
        e for e in want if not isinstance(e, nar.Contents)
    ]
    assert contents == b"".join(bytes(e.data) for e in want if isinstance(e, nar.Contents))


@given(trees.trees(), st.data())
def test_every_proper_prefix_is_truncated(tree: trees.Node, data: st.DataObject) -> None:
    full = nar.encode_bytes(trees.events(tree))
    cut = data.draw(st.integers(0, len(full) - 1))
    err = parse_error(full[:cut])
    assert err.rule is NarRule.TRUNCATED and err.offset <= cut


@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_nar_error(data: bytes) -> None:
    try:
        nar.parse_bytes(s(b"nix-archive-1") + data)
    except NarError:
        pass


def test_example_layout_is_exact() -> None:
    data = archive(directory(entry(b"a", reg(b"hi")), entry(b"l", link(b"a"))))
    assert (
        nar.encode_bytes(
            [nar.Directory(b""), nar.Regular(b"a", 2), nar.Contents(b"hi"), nar.Symlink(b"l", b"a")]
        )
        == data
    )


# --- each rule -----------------------------------------------------------------------


def test_magic() -> None:
    err = parse_error(s(b"nix-archive-2") + reg(b""))
    assert (err.rule, err.offset) == (NarRule.MAGIC, 0)
    assert parse_error(s(b"nix-archive-1xxx") + reg(b"")).rule is NarRule.MAGIC


def test_unexpected_token_names_offset() -> None:
    err = parse_error(s(b"nix-archive-1") + raw(b"[", b"type"))
    assert (err.rule, err.offset) == (NarRule.TOKEN, 24)
    assert "expected '('" in str(err) and "byte 24" in str(err)


def test_nonzero_padding() -> None:
    bad = archive(reg(b"abc"))
    i = bad.index(b"abc") + 3
    err = parse_error(bad[:i] + b"\x01" + bad[i + 1 :])
    assert (err.rule, err.offset) == (NarRule.PADDING, i)


def test_nonzero_padding_in_a_string() -> None:
    good = archive(directory(entry(b"abc", reg(b""))))
    i = good.index(b"abc") + 3
    err = parse_error(good[:i] + b"\x07" + good[i + 1 :])
    assert (err.rule, err.offset) == (NarRule.PADDING, i)


def test_unknown_node_type() -> None:
    err = parse_error(archive(raw(b"(", b"type", b"fifo", b")")))
    # magic (24) + "(" (16) + "type" (16): the type string starts at 56.
    assert (err.rule, err.offset) == (NarRule.NODE_TYPE, 24 + 16 + 16)


def test_executable_marker_must_be_empty() -> None:
    err = parse_error(
        archive(raw(b"(", b"type", b"regular", b"executable", b"x", b"contents", 0, b")"))
    )
    assert err.rule is NarRule.EXECUTABLE_MARKER


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_invalid_names(name: bytes) -> None:
    data = archive(directory(entry(name, reg(b""))))
    err = parse_error(data)
    assert err.rule is NarRule.NAME_INVALID
    assert err.offset == data.index(s(b"name")) + 16


def test_name_length() -> None:
    assert nar.parse_bytes(archive(directory(entry(b"n" * 255, reg(b"")))))[1].path == b"n" * 255
    assert (
        parse_error(archive(directory(entry(b"n" * 256, reg(b""))))).rule is NarRule.NAME_TOO_LONG
    )


@pytest.mark.parametrize("names", [(b"b", b"a"), (b"a", b"a"), (b"a", b"B")])
def test_unsorted_or_duplicate_names(names: tuple[bytes, bytes]) -> None:
    first = entry(names[0], reg(b""))
    data = archive(directory(first, entry(names[1], reg(b""))))
    err = parse_error(data)
    # magic (24) + directory header (56) + first entry + 'entry' '(' 'name' (48):
    # the offending name's length field.
    assert (err.rule, err.offset) == (NarRule.NAME_ORDER, 24 + 56 + len(first) + 48)


def test_names_sort_as_unsigned_bytes() -> None:
    # Nix orders with std::string (unsigned bytes): 'Z' < 'a' < '\xe9'.
    nar.parse_bytes(
        archive(directory(entry(b"Z", reg(b"")), entry(b"a", reg(b"")), entry(b"\xe9", reg(b""))))
    )


def test_symlink_rules() -> None:
    assert parse_error(archive(link(b""))).rule is NarRule.SYMLINK_EMPTY
    assert parse_error(archive(link(b"t" * 4096))).rule is NarRule.SYMLINK_TOO_LONG
    assert parse_error(archive(link(b"a\0b"))).rule is NarRule.SYMLINK_NUL
    assert nar.parse_bytes(archive(link(b"t" * 4095))) == [nar.Symlink(b"", b"t" * 4095)]


def nested(levels: int) -> bytes:
    node = reg(b"")
    for _ in range(levels - 1):
        node = directory(entry(b"d", node))
    return archive(directory(entry(b"d", node)) if levels else node)


def test_depth() -> None:
    assert nar.parse_bytes(nested(64))[-1] == nar.Regular(b"/".join([b"d"] * 64), 0)
    assert parse_error(nested(65)).rule is NarRule.DEPTH


def test_trailing_data() -> None:
    err = parse_error(archive(reg(b"")) + b"x")
    assert err.rule is NarRule.TRAILING


def test_encoder_enforces_the_same_rules() -> None:
    with pytest.raises(NarError) as e:
        nar.encode_bytes([nar.Directory(b""), nar.Regular(b"b", 0), nar.Regular(b"a", 0)])
    assert e.value.rule is NarRule.NAME_ORDER
    with pytest.raises(NarError) as e:
        nar.encode_bytes([nar.Directory(b""), nar.Regular(b"a", 3), nar.Contents(b"ab")])
    assert e.value.rule is NarRule.EVENT_ORDER
    with pytest.raises(NarError) as e:
        nar.encode_bytes([nar.Regular(b"", 0), nar.Regular(b"x", 0)])
    assert e.value.rule is NarRule.EVENT_ORDER
    with pytest.raises(NarError) as e:
        nar.encode_bytes([nar.Directory(b""), nar.Symlink(b"..", b"x")])
    assert e.value.rule is NarRule.NAME_INVALID
