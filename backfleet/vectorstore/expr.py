"""Every Milvus filter expression backfleet sends, built and escaped here (never by pymilvus).

String literals are double-quoted and pure ASCII: ``\\`` and ``"`` are backslash-escaped,
printable ASCII (``0x20``-``0x7e``) is kept, and every other character (controls, tabs,
newlines, zero-width and bidi marks, non-ASCII letters, astral characters) is written as
``\\uXXXX`` or ``\\UXXXXXXXX``. milvus-server's parser (``Plan.g4``: ``"`` DoubleSChar* ``"``
with C escape sequences, then Go's ``strconv.Unquote``) decodes exactly that back to the
original text, for any unicode string without surrogates; ``'`` needs no escape inside
double quotes. Proved on the real server by ``tests/integration/test_id_expressions.py``.

Integer literals: the server parses ``-9223372036854775808`` (INT64_MIN) as the negation of
an out-of-range ``9223372036854775808`` and refuses it, so no expression here ever contains
it: ``id >= INT64_MIN`` is no condition at all, ``id > INT64_MIN`` is
``id >= -9223372036854775807``, ``id == INT64_MIN`` is ``id < -9223372036854775807``.

An open bound is "no bound": :func:`range_filter` without bounds is :func:`everything`,
which every int64 (INT64_MIN included) or every string (the empty string included) matches.
"""

from __future__ import annotations

from collections.abc import Sequence

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_MIN_PLUS_1 = INT64_MIN + 1


def string_literal(value: str) -> str:
    """``value`` as a double-quoted, pure-ASCII Milvus string literal."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"id {value!r} contains a lone surrogate (not valid unicode text)")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def int_literal(value: int) -> str:
    """A decimal int64 literal; INT64_MIN has none (see the module doc)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"id {value!r} is not an integer")
    if not _MIN_PLUS_1 <= value <= INT64_MAX:
        raise ValueError(f"id {value} has no int64 literal the server accepts")
    return str(value)


def literal(value: int | str) -> str:
    """An id as a Milvus literal: strings escaped, integers checked."""
    if isinstance(value, str):
        return string_literal(value)
    return int_literal(value)


def everything(id_type: str, field: str = "id") -> str:
    """A filter every row matches: every int64 is <= INT64_MAX, every string >= ""."""
    return f'{field} >= ""' if id_type == "str" else f"{field} <= {INT64_MAX}"


def nothing(id_type: str, field: str = "id") -> str:
    """A filter no row matches."""
    if id_type == "str":
        return f'{field} < ""'
    return f"({field} > {INT64_MAX - 1} and {field} < {INT64_MAX})"


def _at_least(field: str, value: int | str) -> str | None:
    if value == INT64_MIN and isinstance(value, int):
        return None  # every int64
    return f"{field} >= {literal(value)}"


def _above(field: str, value: int | str) -> str | None:
    if isinstance(value, int) and value == INT64_MIN:
        return f"{field} >= {_MIN_PLUS_1}"
    return f"{field} > {literal(value)}"


def _below(field: str, value: int | str, id_type: str) -> str:
    if isinstance(value, int) and value == INT64_MIN:
        return nothing(id_type, field)
    return f"{field} < {literal(value)}"


def range_filter(
    lo: int | str | None,
    hi: int | str | None,
    id_type: str,
    *,
    after: int | str | None = None,
    field: str = "id",
) -> str:
    """Rows of ``[lo, hi)`` with id > ``after``; ``None`` bounds are open. Never empty."""
    parts: list[str] = []
    if lo is not None:
        cond = _at_least(field, lo)
        if cond is not None:
            parts.append(cond)
    if after is not None:
        cond = _above(field, after)
        if cond is not None:
            parts.append(cond)
    if hi is not None:
        parts.append(_below(field, hi, id_type))
    return " and ".join(parts) if parts else everything(id_type, field)


def ids_in(ids: Sequence[int | str], id_type: str, field: str = "id") -> str:
    """Rows whose id is one of ``ids`` (exact, escaped; never empty)."""
    if not ids:
        return nothing(id_type, field)
    has_min = any(isinstance(i, int) and i == INT64_MIN for i in ids)
    rest = [i for i in ids if not (isinstance(i, int) and i == INT64_MIN)]
    terms = []
    if rest:
        terms.append(f"{field} in [{', '.join(literal(i) for i in rest)}]")
    if has_min:
        terms.append(f"{field} < {_MIN_PLUS_1}")  # the only int64 below INT64_MIN + 1
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def id_sort_key(value: int | str) -> int | bytes:
    """The order Milvus (and the source, ``COLLATE "C"``) sorts ids in: bytewise UTF-8."""
    return value.encode("utf-8") if isinstance(value, str) else value
