"""backfleet's own Milvus expressions against the real milvus-server (issue 13, items 1 and 6).

* Open range bounds are "no bound" at every edge: INT64_MIN and the empty string are
  scanned, counted, fetched, deleted and reconciled like any other id (the old fallback
  filter ``id >= -9223372036854775807`` skipped INT64_MIN: reconcile was never clean).
* A property-based round trip (hypothesis) of arbitrary unicode text ids — quotes,
  backslashes, apostrophes, tabs, newlines, control, zero-width and RTL characters, trailing
  spaces, astral characters, expression syntax — through upsert, scan (pages of 2, so every
  awkward id becomes a page filter), get, count, delete and reconcile with repair, against a
  real Postgres source. Milvus, Python and the source (``COLLATE "C"``) must order them the
  same (bytewise UTF-8). ``"\\x00"`` is excluded: Postgres text cannot hold NUL. Lone
  surrogates are excluded: they are not text (no UTF-8 encoding).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from backfleet.db.session import make_engine
from backfleet.embedding.local import HashingEmbedder
from backfleet.settings import SourceSettings
from backfleet.source import Source, text_hash
from backfleet.vectorstore import Generation, VectorStore
from backfleet.vectorstore.expr import INT64_MIN, id_sort_key
from coordinator.reconciler import Reconciler, Repairer
from tests.support.services import postgres_database

pytestmark = pytest.mark.integration

EMB = HashingEmbedder("hash-words", "1", 8)
TEXT = "a document"

AWKWARD = [
    '" or id != "',
    "back\\slash\\end",
    "it's",
    "'",
    '"',
    "\\",
    "\\'",
    '\\"',
    "\\\\\"'",
    "tab\there",
    "new\nline",
    "cr\rlf",
    "zero\u200bwidth",
    "\u200d",
    "\u202eRTL override",
    "\u05e9\u05dc\u05d5\u05dd",
    "trailing  ",
    " ",
    "",
    "\U0001f600",
    "\U0010fffd",
    "\x01\x1f\x7f\x80\x9f",
    "\u2028\u2029",
    "\ufeffbom",
    "e\u0301",
    "\\u0041",
    "\\x41",
    "\\n",
    "\\",
    'id > "" or id < ""',
    "[1, 2]",
    "%_*",
]
ID_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
IDS = st.one_of(st.sampled_from(AWKWARD), st.text(ID_CHARS, max_size=40))


def generation(store: VectorStore, id_type: str) -> Generation:
    name = f"it_expr_{uuid.uuid4().hex[:8]}__hash_words_v1__g1"
    return store.create_generation(name, name.split("__")[0], EMB.identity, id_type, "FLAT")


def upsert(gen: Generation, ids: list[Any]) -> None:
    vectors = EMB.embed([TEXT] * len(ids)).vectors
    gen.upsert(ids, vectors, [text_hash(TEXT)] * len(ids), EMB.identity)


def scanned(gen: Generation, lo: Any = None, hi: Any = None, batch: int = 2) -> list[Any]:
    return [r["id"] for page in gen.scan(lo, hi, fields=("id",), batch_size=batch) for r in page]


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with postgres_database() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def make_source(engine: Engine, id_sql: str, ids: list[Any]) -> Source:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE documents (id {id_sql} PRIMARY KEY, text text)"))
        for ident in ids:
            conn.execute(text("INSERT INTO documents VALUES (:i, :t)"), {"i": ident, "t": TEXT})
    return Source(engine, SourceSettings(url="postgresql://", table="documents"))


def test_int64_min_is_inside_every_open_range(milvus_uri: str, pg_engine: Engine) -> None:
    ids = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, 2**62]
    store = VectorStore(milvus_uri)
    gen = generation(store, "int")
    try:
        upsert(gen, ids)
        assert gen.count() == len(ids)
        assert scanned(gen) == ids  # pk order, INT64_MIN first
        assert scanned(gen, None, 0) == ids[:3]
        assert scanned(gen, INT64_MIN, INT64_MIN + 1) == [INT64_MIN]
        assert gen.count(INT64_MIN, None) == len(ids)
        assert gen.count(INT64_MIN, INT64_MIN + 1) == 1
        assert gen.count(None, INT64_MIN) == 0
        assert [r["id"] for r in gen.get([INT64_MIN, 0], ["id"])] == [INT64_MIN, 0]
        assert gen.count_ids([INT64_MIN]) == 1

        # a single-range migration (lo = hi = None): reconcile sees INT64_MIN, clean
        source = make_source(pg_engine, "bigint", ids)
        report = Reconciler(source, gen, None, sample=0).reconcile_range(0, None, None)
        assert report.clean, report.to_dict()
        # missing INT64_MIN: found and repaired
        gen.delete([INT64_MIN])
        assert gen.count() == len(ids) - 1
        sent: list[str] = []
        repairer = Repairer(gen, sent.extend)
        report = Reconciler(source, gen, None, sample=0, repairer=repairer).reconcile_range(
            0, None, None
        )
        assert report.missing == 1 and report.examples["missing"] == [str(INT64_MIN)]
        assert sent == [str(INT64_MIN)] and repairer.deleted == 0
    finally:
        store.drop(gen.name)


def test_the_empty_string_id_is_inside_every_open_range(milvus_uri: str) -> None:
    ids = ["", " ", "a", "\U0001f600"]
    store = VectorStore(milvus_uri)
    gen = generation(store, "str")
    try:
        upsert(gen, ids)
        assert scanned(gen) == ids and gen.count() == len(ids)
        assert scanned(gen, "", " ") == [""] and gen.count(None, " ") == 1
        assert [r["id"] for r in gen.get([""], ["id"])] == [""]
        gen.delete([""])
        assert scanned(gen) == ids[1:]
    finally:
        store.drop(gen.name)


@pytest.fixture(scope="module")
def text_env(milvus_uri: str) -> Iterator[tuple[Generation, Source, Engine]]:
    store = VectorStore(milvus_uri)
    gen = generation(store, "str")
    with postgres_database() as url:
        engine = make_engine(url)
        source = make_source(engine, 'text COLLATE "C"', [])
        yield gen, source, engine
        engine.dispose()
    store.drop(gen.name)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ids=st.lists(IDS, min_size=2, max_size=10, unique=True), data=st.data())
def test_arbitrary_unicode_ids_round_trip(
    text_env: tuple[Generation, Source, Engine], ids: list[str], data: st.DataObject
) -> None:
    """Each read is a Strong query (~0.3 s on milvus-server 2.3.5): about ten per example."""
    gen, source, engine = text_env
    ordered = sorted(ids, key=id_sort_key)
    extra = ids[-1]  # in the generation only
    try:
        upsert(gen, ids)
        # scan: every id once, in bytewise order, awkward ids as page filters (pages of 3)
        assert scanned(gen, batch=3) == ordered
        # count of a range [lo, hi) between two of them
        lo, hi = sorted(data.draw(st.lists(st.sampled_from(ordered), min_size=2, max_size=2)))
        lo, hi = sorted((lo, hi), key=id_sort_key)
        inside = [i for i in ordered if lo.encode() <= i.encode() < hi.encode()]
        assert gen.count(lo, hi) == len(inside)
        # get: exact ids only
        got = sorted((r["id"] for r in gen.get(ids[:3], ["id"])), key=id_sort_key)
        assert got == sorted(ids[:3], key=id_sort_key)
        # the source orders them like Milvus (COLLATE "C" = bytewise UTF-8)
        with engine.begin() as conn:
            for ident in ids[:-1]:
                conn.execute(text("INSERT INTO documents VALUES (:i, :t)"), {"i": ident, "t": TEXT})
        src_order = [d.id for docs in source.iter_batches(None, None, None, 3) for d in docs]
        assert src_order == [i for i in ordered if i != extra]
        # reconcile with repair: exactly the one extra is found and deleted, nothing else
        repairer = Repairer(gen, lambda part: None)
        rec = Reconciler(source, gen, None, chunk=50, sample=0, repairer=repairer)
        rr = rec.reconcile_range(0, None, None)
        assert (rr.extra, rr.missing, rr.duplicated, rr.stale) == (1, 0, 0, 0), rr.to_dict()
        assert rr.examples["extra"] == [extra] and rr.generation_rows == len(ids)
        assert repairer.deleted == 1 and repairer.refused == 0
        # delete: exactly the ids named
        gen.delete(ids[:1])
        assert gen.count() == len(ids) - 2
    finally:
        gen.delete(ids)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM documents"))


def test_pages_of_one_row_end(milvus_uri: str) -> None:
    """A scan ends (the old iterator looped forever on `" or id != "` at a page end)."""
    ids = ['" or id != "', "a", "b"]
    store = VectorStore(milvus_uri)
    gen = generation(store, "str")
    try:
        upsert(gen, ids)
        pages = list(gen.scan(None, None, fields=("id",), batch_size=1))
        assert [r["id"] for p in pages for r in p] == ids
        assert len(pages) <= len(ids)
    finally:
        store.drop(gen.name)


def test_audit_scans_and_samples_awkward_text_ids(milvus_uri: str) -> None:
    from backfleet.vectorstore.audit import audit_collection

    ids = sorted(set(AWKWARD), key=id_sort_key)
    store = VectorStore(milvus_uri)
    gen = generation(store, "str")
    try:
        upsert(gen, ids)
        full = audit_collection(store, gen.name, batch_size=4)
        assert full.rows == full.scanned == full.vectors_examined == len(ids)
        sampled = audit_collection(store, gen.name, sample=len(ids), batch_size=4, seed=1)
        assert sampled.scanned == sampled.vectors_examined == len(ids)
        assert not full.mixed and not sampled.mixed
    finally:
        store.drop(gen.name)
