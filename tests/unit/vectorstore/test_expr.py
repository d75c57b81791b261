"""The expression builder's output (the real server's reading of it: tests/integration/
test_id_expressions.py)."""

from __future__ import annotations

import pytest

from backfleet.vectorstore.expr import (
    INT64_MAX,
    INT64_MIN,
    everything,
    ids_in,
    literal,
    range_filter,
    string_literal,
)


def test_string_literals_are_pure_ascii_and_escape_quotes_and_backslashes() -> None:
    assert string_literal('" or id != "') == '"\\" or id != \\""'
    assert string_literal("back\\slash") == '"back\\\\slash"'
    assert string_literal("it's") == '"it\'s"'
    assert string_literal("tab\t\n") == '"tab\\u0009\\u000a"'
    assert string_literal("zw\u200b\U0001f600") == '"zw\\u200b\\U0001f600"'
    assert string_literal("") == '""'
    assert all(32 <= ord(c) < 127 for c in string_literal("é\u202e\x7f\x01"))


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        string_literal("a\ud800")


def test_int64_min_never_appears_in_an_expression() -> None:
    text = str(INT64_MIN)
    assert range_filter(INT64_MIN, None, "int") == everything("int")
    assert range_filter(None, None, "int", after=INT64_MIN) == f"id >= {INT64_MIN + 1}"
    assert text not in ids_in([INT64_MIN, 5], "int")
    assert ids_in([INT64_MIN, 5], "int") == f"(id in [5] or id < {INT64_MIN + 1})"
    assert text not in range_filter(None, INT64_MIN, "int")
    with pytest.raises(ValueError):
        literal(INT64_MIN)
    with pytest.raises(TypeError):
        literal(True)


def test_open_bounds_are_no_bound() -> None:
    assert range_filter(None, None, "int") == f"id <= {INT64_MAX}"
    assert range_filter(None, None, "str") == 'id >= ""'
    assert range_filter("", None, "str") == 'id >= ""'
    assert range_filter(None, "b", "str", after="a\\") == 'id > "a\\\\" and id < "b"'
    assert range_filter(1, 9, "int", field="pk") == "pk >= 1 and pk < 9"
