"""Golden files: every malformed line is refused with its line number."""

from __future__ import annotations

import pytest

from backfleet.errors import GoldenSetError
from coordinator.golden import parse_golden


def parse(text: str, id_type: str = "int") -> object:
    return parse_golden(text.splitlines(), name="g.jsonl", id_type=id_type)


def test_formats_and_grades() -> None:
    gold = parse_golden(
        [
            '{"query": "a b", "relevant": [1, "2"]}',
            "",
            '{"query": "c", "relevant": {"7": 3, "8": 0}, "id": "q7"}',
            '{"query": "d", "relevant": [{"id": 9, "grade": 2}, {"id": 4}]}',
        ],
        name="g.jsonl",
        id_type="int",
    )
    assert [q.line for q in gold.queries] == [1, 3, 4]
    assert gold.queries[0].grades == {1: 1.0, 2: 1.0}
    assert gold.queries[1].qid == "q7" and gold.queries[1].relevant == {7}
    assert gold.queries[2].grades == {9: 2.0, 4: 1.0}
    assert not gold.pseudo
    text_ids = parse_golden(['{"query": "x", "relevant": ["a-1"]}'], name="g", id_type="str")
    assert text_ids.queries[0].grades == {"a-1": 1.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"query": "ok", "relevant": [1]}\n{"query": "x", "relevant": [1]', "line 2: bad JSON"),
        ('{"query": "", "relevant": [1]}', "line 1: empty or missing query"),
        ('\n\n{"query": "   ", "relevant": [1]}', "line 3: empty or missing query"),
        ('{"relevant": [1]}', "line 1: empty or missing query"),
        ('{"query": "q"}', "line 1: missing 'relevant'"),
        ('{"query": "q", "relevant": []}', "line 1: no relevant id"),
        ('{"query": "q", "relevant": {"1": 0}}', "line 1: no relevant id"),
        ('{"query": "q", "relevant": ["x"]}', "line 1: id 'x' is not an integer"),
        ('{"query": "q", "relevant": {"1": -1}}', "line 1: grade -1 is not a number"),
        ('{"query": "q", "relevant": 5}', "line 1: 'relevant' must be a list"),
        ("[1, 2]", "line 1: expected a JSON object"),
        ("", "holds no queries"),
    ],
)
def test_bad_lines_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(GoldenSetError) as err:
        parse(text)
    assert expected in str(err.value)
    assert "g.jsonl" in str(err.value)
