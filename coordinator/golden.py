"""Golden query sets: JSON lines of a query and its relevant ids, graded relevance optional.

One query per line::

    {"query": "refund a duplicate charge", "relevant": [17, 942]}
    {"query": "reset my password", "relevant": {"88": 3, "91": 1}}
    {"query": "customs delay", "relevant": [{"id": 5, "grade": 2}], "id": "q-7"}

A list of ids means grade 1 each; a mapping or ``{"id", "grade"}`` objects give graded
relevance (gains for nDCG, any number ≥ 0; at least one must be > 0). Blank lines are
skipped. Every error names the file and the line.

``generate`` builds *pseudo-queries* for teams without a judged set: an excerpt of a sampled
document is the query and that document the one relevant id. They are weaker than real
queries — excerpts favour lexical matching and say nothing about what users ask — and every
line is marked ``"pseudo": true`` so the evaluation says so.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backfleet.errors import GoldenSetError
from backfleet.source import Source, SourceId

PSEUDO_WARNING = (
    "pseudo-queries are excerpts of the corpus itself: they favour lexical matching and say "
    "nothing about what users really ask; a GO on them is weaker evidence than a GO on real, "
    "judged queries"
)
FORMAT_HINT = 'one JSON object per line: {"query": "text", "relevant": [id, …] or {"id": grade}}'


@dataclass(frozen=True)
class GoldenQuery:
    line: int
    qid: str
    text: str
    grades: dict[SourceId, float]

    @property
    def relevant(self) -> set[SourceId]:
        return {i for i, g in self.grades.items() if g > 0}


@dataclass(frozen=True)
class GoldenSet:
    name: str
    queries: list[GoldenQuery]
    pseudo: bool


def _id(value: Any, id_type: str, where: str) -> SourceId:
    if isinstance(value, bool):
        raise GoldenSetError(f"{where}: id {value!r} is not an id", hint=FORMAT_HINT)
    if id_type == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise GoldenSetError(
            f"{where}: id {value!r} is not an integer (the source has integer ids)",
            hint=FORMAT_HINT,
        )
    if isinstance(value, str | int) and str(value):
        return str(value)
    raise GoldenSetError(f"{where}: id {value!r} is not a text id", hint=FORMAT_HINT)


def _grade(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise GoldenSetError(
            f"{where}: grade {value!r} is not a number >= 0", hint="grades are gains, e.g. 0-3"
        )
    return float(value)


def _grades(raw: Any, id_type: str, where: str) -> dict[SourceId, float]:
    grades: dict[SourceId, float] = {}
    if isinstance(raw, dict):
        for key, grade in raw.items():
            grades[_id(key, id_type, where)] = _grade(grade, where)
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                if "id" not in item:
                    raise GoldenSetError(
                        f"{where}: relevant object without an id", hint=FORMAT_HINT
                    )
                grades[_id(item["id"], id_type, where)] = _grade(item.get("grade", 1), where)
            else:
                grades[_id(item, id_type, where)] = 1.0
    else:
        raise GoldenSetError(
            f"{where}: 'relevant' must be a list of ids or an object of id: grade",
            hint=FORMAT_HINT,
        )
    if not any(g > 0 for g in grades.values()):
        raise GoldenSetError(f"{where}: no relevant id (grade > 0)", hint=FORMAT_HINT)
    return grades


def parse_golden(lines: Iterable[str], *, name: str, id_type: str) -> GoldenSet:
    """Parse JSON lines; the first problem raises :class:`GoldenSetError` naming its line."""
    queries: list[GoldenQuery] = []
    flags: list[bool] = []
    for number, raw_line in enumerate(lines, start=1):
        line = raw_line.strip()
        if not line:
            continue
        where = f"golden file {name} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GoldenSetError(f"{where}: bad JSON ({exc.msg})", hint=FORMAT_HINT) from None
        if not isinstance(obj, dict):
            raise GoldenSetError(f"{where}: expected a JSON object", hint=FORMAT_HINT)
        text = obj.get("query")
        if not isinstance(text, str) or not text.strip():
            raise GoldenSetError(f"{where}: empty or missing query", hint=FORMAT_HINT)
        if "relevant" not in obj:
            raise GoldenSetError(f"{where}: missing 'relevant'", hint=FORMAT_HINT)
        grades = _grades(obj["relevant"], id_type, where)
        queries.append(GoldenQuery(number, str(obj.get("id", number)), text.strip(), grades))
        flags.append(bool(obj.get("pseudo", False)))
    if not queries:
        raise GoldenSetError(f"golden file {name} holds no queries", hint=FORMAT_HINT)
    return GoldenSet(name=name, queries=queries, pseudo=any(flags))


def load_golden(path: Path, id_type: str) -> GoldenSet:
    try:
        with path.open(encoding="utf-8") as fh:
            return parse_golden(fh, name=str(path), id_type=id_type)
    except OSError as exc:
        raise GoldenSetError(
            f"cannot read golden file {path}: {exc.strerror}", hint="pass --golden FILE.jsonl"
        ) from None
    except UnicodeDecodeError:
        raise GoldenSetError(f"golden file {path} is not UTF-8 text", hint=FORMAT_HINT) from None


def check_ids(golden: GoldenSet, source: Source, chunk: int = 1000) -> None:
    """Refuse a golden set that names ids the source does not hold (first one, with its line)."""
    wanted: dict[SourceId, int] = {}
    for q in golden.queries:
        for i in q.grades:
            wanted.setdefault(i, q.line)
    ids = list(wanted)
    known: set[SourceId] = set()
    for start in range(0, len(ids), chunk):
        known.update(d.id for d in source.fetch(ids[start : start + chunk]))
    unknown = [i for i in ids if i not in known]
    if unknown:
        first = min(unknown, key=lambda i: wanted[i])
        more = f" ({len(unknown) - 1} more unknown ids)" if len(unknown) > 1 else ""
        raise GoldenSetError(
            f"golden file {golden.name} line {wanted[first]}: id {first!r} is not in the "
            f"source table{more}",
            hint="golden ids must be ids of the source table (source.table)",
        )


# --- pseudo-queries ----------------------------------------------------------------------


def _sample_docs(source: Source, n: int) -> Iterator[tuple[SourceId, str]]:
    total = source.count()
    step = max(1, total // max(1, n))
    starts: list[str | None] = [None, *(Source.encode_id(p) for p in source.split_points(step))]
    for lo in starts[:n]:
        for doc in source.batch(lo, None, None, 5):
            if doc.text and len(doc.text.split()) >= 4:
                yield doc.id, doc.text
                break


def generate_golden(
    source: Source, n: int, *, seed: int = 7, min_words: int = 5, max_words: int = 9
) -> list[dict[str, Any]]:
    """``n`` pseudo-queries spread over the id space: an excerpt of a document, that document
    relevant. Deterministic for a given corpus and ``seed``."""
    if n <= 0:
        raise GoldenSetError(f"cannot generate {n} queries", hint="pass --queries N with N >= 1")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for doc_id, text in _sample_docs(source, n):
        words = text.split()
        span = min(len(words), rng.randint(min_words, max_words))
        start = rng.randrange(len(words) - span + 1)
        query = " ".join(words[start : start + span]).strip(" .,;:")
        rows.append({"query": query, "relevant": [doc_id], "pseudo": True})
    if not rows:
        raise GoldenSetError(
            "the source holds no document with text to build pseudo-queries from",
            hint="check source.table and source.text_column",
        )
    return rows


def write_golden(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
