"""The body reader's fast paths decide exactly as its full walk does (web/body.py).

`decode_object` skips the per-string search when the body's text cannot hold a forbidden
character, and the whole-number walk when no float token appears; for any JSON object,
however it is encoded (raw UTF-8 or `\\u` escapes), the outcome must equal the full walk's.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from commands.errors import InvalidInput
from web.body import (
    FORBIDDEN_CHARACTERS,
    MAX_DEPTH,
    _breaks_a_rule,
    _refuse_where,
    check_json,
    decode_object,
    whole_numbers,
)

# Text that often holds a forbidden character (one of FORBIDDEN_CHARACTERS' ranges) among
# ordinary ones.
_forbidden = st.sampled_from(
    ["\x00", "\x08", "\x0c", "\x1b", "\x7f", "\x85", "\x9b", "\u202e", "\u2066"]
)
_text = st.lists(st.one_of(st.characters(codec="utf-8"), _forbidden), max_size=8).map("".join)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=25,
)
_objects = st.dictionaries(_text, _json, max_size=5)


def full_walk(value: dict[str, Any]) -> dict[str, Any] | str:
    """What the reader did before its fast paths: the refused field, or the value."""
    try:
        check_json(value)
    except InvalidInput as e:
        return f"refused {e.field}"
    whole: dict[str, Any] = whole_numbers(value)
    return whole


def fast(raw: bytes) -> dict[str, Any] | str:
    try:
        return decode_object(raw)
    except InvalidInput as e:
        return f"refused {e.field}"


@given(_objects, st.booleans())
def test_the_fast_paths_decide_as_the_full_walk(value: dict[str, Any], escaped: bool) -> None:
    raw = json.dumps(value, ensure_ascii=True).encode() if escaped else orjson.dumps(value)
    expected = full_walk(orjson.loads(raw))
    got = fast(raw)
    assert got == expected
    if isinstance(got, dict):  # the same types too: 3.0 became 3 in both, 3.5 stayed
        assert orjson.dumps(got) == orjson.dumps(expected)


def test_a_forbidden_character_is_refused_raw_and_escaped() -> None:
    for char in FORBIDDEN_CHARACTERS.replace("-", "")[:6]:
        for raw in (
            orjson.dumps({"a": {"b": f"x{char}"}}),
            json.dumps({"a": {"b": char}}).encode(),
        ):
            assert fast(raw) == "refused a.b"


def _nested(value: Any, depth: int) -> Any:
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@given(_json, st.integers(0, MAX_DEPTH + 3), st.booleans())
def test_the_pathless_walk_finds_a_break_exactly_when_the_naming_walk_does(
    value: Any, depth: int, strings: bool
) -> None:
    """check_json first walks without paths and walks again, naming the field, only when
    that walk found something: the two must agree on every value."""
    value = _nested(value, depth)
    try:
        _refuse_where(value, strings)
    except InvalidInput:
        refused = True
    else:
        refused = False
    assert _breaks_a_rule(value, strings) == refused
