"""scanstream.ext.jsonlines writes each row exactly as orjson writes the row's dict."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from scanstream.ext.jsonlines import encode_rows

values = st.one_of(st.text(), st.integers(-2**63, 2**63 - 1), st.booleans(), st.none(),
                   st.floats(allow_nan=False, allow_infinity=False))
names = st.text(min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(names, min_size=1, max_size=6, unique=True).flatmap(
    lambda fields: st.tuples(st.just(tuple(fields)),
                             st.lists(st.lists(values, min_size=len(fields), max_size=len(fields)), max_size=8))))
def test_rows_are_what_orjson_writes(case):
    fields, rows = case
    columns = [[row[j] for row in rows] for j in range(len(fields))]
    assert encode_rows(fields, columns) == [orjson.dumps(dict(zip(fields, row))) for row in rows]


def test_escapes_and_unicode_byte_for_byte():
    column = ['plain', 'quote "', 'back\\slash', 'tab\tnew\nline', '\x00\x1f\x7f', '中文 é', '']
    assert encode_rows(("v",), [column]) == [orjson.dumps({"v": v}) for v in column]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="2 columns for 1 fields"):
        encode_rows(("a",), [[1], [2]])
    with pytest.raises(ValueError, match="column 'b'"):
        encode_rows(("a", "b"), [[1, 2], [3]])
    assert encode_rows((), []) == []
