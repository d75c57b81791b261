"""Source: identifiers, reflection errors, quantile split points, keyset batches (SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Float, Integer, MetaData, String, Table, Text, insert

from backfleet.corpus import seed_source
from backfleet.db.session import make_engine
from backfleet.errors import ConfigError, PlanError, SourceError
from backfleet.settings import SourceSettings
from backfleet.source import Source, validate_identifier
from coordinator.planner import build_ranges


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'src.db'}")


def make_table(engine: Engine, ids: list[object], id_type: str = "int") -> None:
    col = (
        Column("id", Integer, primary_key=True)
        if id_type == "int"
        else Column("id", String(40), primary_key=True)
    )
    tbl = Table("docs", MetaData(), col, Column("body", Text))
    tbl.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(tbl), [{"id": i, "body": f"text {i}"} for i in ids])


def src(engine: Engine) -> Source:
    return Source(
        engine, SourceSettings(url="sqlite://", table="docs", id_column="id", text_column="body")
    )


@pytest.mark.parametrize("bad", ["docs; drop table x", "1abc", "a b", 'x"y', "", "a" * 80])
def test_identifiers_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a plain SQL identifier"):
        validate_identifier(bad, "source.table")


def test_identifier_injection_never_reaches_sql(engine: Engine) -> None:
    make_table(engine, [1, 2])
    with pytest.raises(ConfigError, match=r"source\.text_column"):
        Source(
            engine,
            SourceSettings(table="docs", id_column="id", text_column="body; DROP TABLE docs"),
        )
    assert src(engine).count() == 2  # nothing was dropped


def test_missing_table_and_column_name_the_setting(engine: Engine) -> None:
    make_table(engine, [1])
    with pytest.raises(SourceError, match=r"source table 'nope' does not exist.*source\.table"):
        Source(engine, SourceSettings(table="nope"))
    with pytest.raises(
        SourceError, match=r"column 'text' not found.*columns: id, body.*source\.text_column"
    ):
        Source(engine, SourceSettings(table="docs", id_column="id", text_column="text"))


def test_unsplittable_id_type(engine: Engine) -> None:
    tbl = Table("f", MetaData(), Column("id", Float, primary_key=True), Column("body", Text))
    tbl.create(engine)
    with pytest.raises(PlanError, match="integer or text"):
        Source(engine, SourceSettings(table="f", id_column="id", text_column="body"))


def test_split_points_are_quantiles_of_skewed_ids(engine: Engine) -> None:
    # 900 dense ids, then 100 ids spread over a huge gap: equal counts, not equal widths
    ids = list(range(1, 901)) + [10_000 + 1_000_000 * k for k in range(100)]
    make_table(engine, ids)
    s = src(engine)
    points = s.split_points(250)
    assert points == [251, 501, 751]
    ranges = build_ranges([str(p) for p in points])
    counts = [s.count(lo, hi) for lo, hi in ranges]
    assert counts == [250, 250, 250, 250]
    assert sum(counts) == len(ids)


def test_split_points_text_ids_bytewise(engine: Engine) -> None:
    ids = [f"doc-{i:05d}" for i in range(1000)] + ["Zed", "apple", "Ärger"]
    make_table(engine, ids, id_type="str")
    s = src(engine)
    assert s.id_type == "str"
    points = s.split_points(300)
    assert len(points) == 3
    ranges = build_ranges([str(p) for p in points])
    assert sum(s.count(lo, hi) for lo, hi in ranges) == len(ids)
    assert sorted(ids, key=lambda x: x.encode())[300] == points[0]


def test_small_source_is_one_range(engine: Engine) -> None:
    make_table(engine, [5, 6, 7])
    assert src(engine).split_points(10) == []
    assert build_ranges([]) == [(None, None)]


def test_keyset_batches_cover_range_in_order(engine: Engine) -> None:
    make_table(engine, list(range(1, 101)))
    s = src(engine)
    got = [[d.id for d in b] for b in s.iter_batches("10", "60", None, 15)]
    assert [len(b) for b in got] == [15, 15, 15, 5]
    assert [i for b in got for i in b] == list(range(10, 60))
    resumed = [d.id for b in s.iter_batches("10", "60", "40", 100) for d in b]
    assert resumed == list(range(41, 60))


def test_keyset_never_uses_offset(engine: Engine) -> None:
    make_table(engine, list(range(1, 11)))
    s = src(engine)
    statements: list[tuple[str, tuple[object, ...]]] = []
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def grab(conn, cursor, statement, params, *args):  # type: ignore[no-untyped-def]
        statements.append((statement, tuple(params)))

    assert [d.id for d in s.batch("1", None, "3", 4)] == [4, 5, 6, 7]
    ((stmt, params),) = statements
    assert "id > ?" in stmt and "ORDER BY" in stmt
    # SQLite's dialect always renders "LIMIT ? OFFSET ?"; the offset must be 0 (keyset, not paging)
    if "OFFSET" in stmt.upper():
        assert params[-1] == 0


def test_corpus_seed_and_stats(engine: Engine) -> None:
    seed_source(engine, 500)
    s = Source(engine, SourceSettings(table="documents", updated_at_column="updated_at"))
    docs, chars = s.stats()
    assert docs == 500 and chars > 500 * 50
    assert s.fetch([3, 1, 999])[0].id == 1


def test_keyset_walk_matches_single_batches_for_text_ids_and_open_bounds(engine: Engine) -> None:
    ids = ["b", "B", "a", "a0", "ab", "Z", "_", "zz", "é", "0"]
    make_table(engine, ids, id_type="str")
    s = src(engine)
    everything = [d.id for b in s.iter_batches(None, None, None, 3) for d in b]
    assert everything == sorted(ids, key=lambda i: i.encode())  # bytewise, like Milvus
    # every combination of bounds gives what the one-batch query gives
    for lo, hi, after in [("B", "b", None), (None, "a0", "0"), ("a", None, "ab"), ("a", "zz", "a")]:
        walked = [d.id for b in s.iter_batches(lo, hi, after, 2) for d in b]
        assert walked == [d.id for d in s.batch(lo, hi, after, 100)], (lo, hi, after)


def test_keyset_walk_sends_the_keyset_statement_on_one_connection(engine: Engine) -> None:
    make_table(engine, list(range(1, 21)))
    s = src(engine)
    from sqlalchemy import event

    statements: list[tuple[str, tuple[object, ...]]] = []
    checkouts: list[object] = []

    @event.listens_for(engine, "before_cursor_execute")
    def grab(conn, cursor, statement, params, *args):  # type: ignore[no-untyped-def]
        statements.append((statement, tuple(params)))

    @event.listens_for(engine.pool, "checkout")
    def checkout(dbapi_conn, record, proxy):  # type: ignore[no-untyped-def]
        checkouts.append(dbapi_conn)

    batches = [[d.id for d in b] for b in s.iter_batches("5", "18", "6", 5)]
    assert batches == [[7, 8, 9, 10, 11], [12, 13, 14, 15, 16], [17]]
    keyset = [st for st, _ in statements if "ORDER BY" in st]
    # three batches and the read that finds the range exhausted
    assert len(keyset) == 4 and all("id > ?" in st for st in keyset)
    assert [p[-1] for st, p in statements if "ORDER BY" in st] == [0, 0, 0, 0]  # OFFSET 0 only
    assert len(checkouts) == 1


def test_keyset_walk_returns_the_same_values_as_a_batch_timestamps_included(
    engine: Engine,
) -> None:
    """The walk sends driver SQL; SQLite returns timestamps as text, which it must convert."""
    from datetime import datetime

    seed_source(engine, 50)
    s = Source(engine, SourceSettings(table="documents", updated_at_column="updated_at"))
    walked = [d for b in s.iter_batches(None, None, None, 7) for d in b]
    assert walked == s.batch(None, None, None, 100)
    assert all(isinstance(d.updated_at, datetime) for d in walked)
