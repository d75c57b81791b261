"""Prove a shadow generation complete against the source, range by range, in bounded memory.

Per range of the migration: the source count against the generation's ``count(*)`` (Strong
consistency, never collection statistics), then a diff in *chunks*: the source ids of a range
are read in keyset batches of ``chunk`` documents; each batch defines an id interval
``[first id, first id of the next batch)`` and the generation rows of exactly that interval
are scanned (Strong) and compared as sets. Memory is bounded by the chunk, not the corpus, and
the diff does not depend on the order in which Milvus streams rows.

What is found, per id:

* ``missing``     in the source (with text), not in the generation;
* ``extra``       in the generation, not in the source (or the source text is empty: the
                  pipeline never embeds those);
* ``duplicated``  stored more than once (``count(*)`` of an interval above the distinct ids
                  seen; bisected down to the ids);
* ``stale``       the stored text hash is not the hash of the current source text;
* ``wrong_model`` the row's model tag is not the generation's;
* ``corrupted``   a sample of rows per range, re-embedded with the generation's model, whose
                  stored vector has cosine < ``min_cosine`` to the fresh one.

Documents the pipeline rejects from the source alone — a text id over the generation's
primary key (``STR_ID_MAX`` UTF-8 bytes) or a text or id that is not UTF-8 — are not
expected in the generation (like empty ones): counted as ``rejected_docs`` and listed in
``rejected_examples``, never ``missing`` (no command could ever make them present).

With a repairer, each chunk is repaired as soon as it is diffed: extras and duplicates are
deleted, and missing, stale, wrong-model, duplicated and corrupted ids are re-embedded.
Every run is recorded as a :class:`~backfleet.db.models.Reconcile` row (the cutover gate).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from backfleet.db.checkpoint import utcnow
from backfleet.db.models import Migration, Range, Reconcile
from backfleet.db.queries import latest_of_migration
from backfleet.db.session import Database
from backfleet.embedding.base import Embedder
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import ConfigError
from backfleet.logs import get_logger
from backfleet.source import Doc, Source, SourceId, id_too_long, text_hash
from backfleet.vectorstore import Generation
from backfleet.vectorstore.expr import id_sort_key
from backfleet.vectorstore.generation import STR_ID_MAX

log = get_logger("backfleet.reconciler")

KINDS = ("missing", "extra", "duplicated", "stale", "wrong_model", "corrupted")
#: Ids kept per kind and range as examples (the counts are exact; the lists are not).
EXAMPLES = 10
#: Ranges kept in a Reconcile row's details (the ones that are not clean).
DETAIL_RANGES = 200
DEFAULT_CHUNK = 5000
DEFAULT_SAMPLE = 16
MIN_COSINE = 0.999
#: Rows per query-iterator page (Milvus caps a query at 16384 rows).
SCAN_BATCH_MAX = 10_000


class Repairer:
    """What ``--repair`` does with ids found wrong: delete from Milvus, re-embed via workers.

    A row is deleted only once it is identified *by exact id*: an extra must be stored in the
    generation (an exact-id lookup) and absent from the source (an exact-id lookup; blank
    text counts as absent, the pipeline never embeds it); a duplicate must count twice or
    more under an exact-id filter. Every other candidate is refused, logged and counted.
    """

    def __init__(
        self,
        generation: Generation,
        enqueue: Callable[[list[str]], None],
        batch_size: int = 256,
    ) -> None:
        self.generation = generation
        self.enqueue = enqueue
        self.batch_size = batch_size
        self.deleted = 0
        self.enqueued = 0
        self.refused = 0

    def delete_extra(self, source: Source, ids: Sequence[SourceId]) -> list[SourceId]:
        """Delete the ids confirmed extra by exact id; returns them."""
        done: list[SourceId] = []
        for i in range(0, len(ids), self.batch_size):
            part = list(ids[i : i + self.batch_size])
            in_source = {d.id for d in source.fetch(part) if _has_text(d)}
            stored = {r["id"] for r in self.generation.get(part, ["id"])}
            sure = [x for x in part if x in stored and x not in in_source]
            self._refuse("extra", [x for x in part if x not in sure])
            self._delete(sure)
            done.extend(sure)
        return done

    def delete_duplicates(self, ids: Sequence[SourceId]) -> list[SourceId]:
        """Delete every copy of the ids stored more than once (exact-id count); returns them."""
        sure = [x for x in ids if self.generation.count_ids([x]) > 1]
        self._refuse("duplicated", [x for x in ids if x not in sure])
        for i in range(0, len(sure), self.batch_size):
            self._delete(sure[i : i + self.batch_size])
        return sure

    def delete(self, ids: Sequence[SourceId]) -> None:
        for i in range(0, len(ids), self.batch_size):
            self._delete(list(ids[i : i + self.batch_size]))

    def _delete(self, part: list[SourceId]) -> None:
        if part:
            self.generation.delete(part)
            self.deleted += len(part)

    def _refuse(self, kind: str, ids: list[SourceId]) -> None:
        if ids:
            self.refused += len(ids)
            log.warning(
                "repair_delete_refused",
                kind=kind,
                ids=len(ids),
                examples=[str(x) for x in ids[:EXAMPLES]],
                error="not confirmed by an exact-id lookup in the source and the generation",
            )

    def reembed(self, ids: Sequence[SourceId]) -> None:
        for i in range(0, len(ids), self.batch_size):
            part = [Source.encode_id(x) for x in ids[i : i + self.batch_size]]
            self.enqueue(part)
            self.enqueued += len(part)


@dataclass
class RangeReport:
    seq: int
    lo: str | None
    hi: str | None
    source_docs: int = 0
    empty_docs: int = 0
    #: documents the pipeline dead-letters from the source alone (id too long, not UTF-8)
    rejected_docs: int = 0
    generation_rows: int = 0
    missing: int = 0
    extra: int = 0
    duplicated: int = 0
    stale: int = 0
    wrong_model: int = 0
    corrupted: int = 0
    sampled: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def expected_rows(self) -> int:
        return self.source_docs - self.empty_docs - self.rejected_docs

    @property
    def count_ok(self) -> bool:
        return self.generation_rows == self.expected_rows

    @property
    def clean(self) -> bool:
        return self.count_ok and not any(getattr(self, k) for k in KINDS)

    def note(self, kind: str, ids: Sequence[SourceId]) -> None:
        if not ids:
            return
        setattr(self, kind, getattr(self, kind) + len(ids))
        kept = self.examples.setdefault(kind, [])
        kept.extend(str(i) for i in ids[: max(0, EXAMPLES - len(kept))])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["clean"] = self.clean
        data["count_ok"] = self.count_ok
        return data


@dataclass
class ReconcileReport:
    migration_id: int
    generation: str
    model: str
    clean: bool
    source_docs: int
    empty_docs: int
    generation_rows: int
    missing: int
    extra: int
    duplicated: int
    stale: int
    wrong_model: int
    corrupted: int
    sampled: int
    ranges: int
    dirty_ranges: list[RangeReport]
    chunk: int
    sample_per_range: int
    seconds: float
    ids_per_second: float
    source_updated_max: str | None = None
    repair: dict[str, int] | None = None
    rejected_docs: int = 0
    #: a few of the ids counted in ``rejected_docs`` (each cut to 60 characters)
    rejected_examples: list[str] = field(default_factory=list)
    reconcile_id: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dirty_ranges"] = [r.to_dict() for r in self.dirty_ranges]
        for key in ("started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


class _Sample:
    """A reservoir of ``(id, text)`` per range: bounded by the sample size."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.seen = 0
        self.items: list[tuple[SourceId, str]] = []

    def offer(self, doc_id: SourceId, text: str) -> None:
        if self.size <= 0:
            return
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append((doc_id, text))
            return
        j = self.rng.randrange(self.seen)
        if j < self.size:
            self.items[j] = (doc_id, text)


def _has_text(doc: Doc) -> bool:
    return doc.text is not None and bool(doc.text.strip())


class Reconciler:
    """Diff one generation against the source over a migration's ranges."""

    def __init__(
        self,
        source: Source,
        generation: Generation,
        embedder: Embedder | None,
        *,
        chunk: int = DEFAULT_CHUNK,
        sample: int = DEFAULT_SAMPLE,
        min_cosine: float = MIN_COSINE,
        max_input_tokens: int | None = None,
        repairer: Repairer | None = None,
        seed: int | None = None,
    ) -> None:
        if chunk <= 0:
            raise ConfigError(f"chunk size {chunk} is not positive", hint="pass --chunk N > 0")
        if sample < 0:
            raise ConfigError(f"sample size {sample} is negative", hint="pass --sample N >= 0")
        if sample and embedder is None:
            raise ConfigError("sampling vectors needs the generation's embedder")
        if embedder is not None:
            generation.identity.require_same(embedder.identity, f"generation {generation.name}")
        self.source = source
        self.generation = generation
        self.embedder = embedder
        self.chunk = chunk
        self.sample = sample
        self.min_cosine = min_cosine
        self.max_input_tokens = max_input_tokens
        self.repairer = repairer
        self.rng = random.Random(seed)
        self.tag = generation.identity.tag
        self.updated_max: datetime | None = None
        self.rejected_examples: list[str] = []

    # --- one range ------------------------------------------------------------------

    def reconcile_range(self, seq: int, lo: str | None, hi: str | None) -> RangeReport:
        src, gen = self.source, self.generation
        report = RangeReport(seq=seq, lo=lo, hi=hi)
        lo_id = src.decode_id(lo) if lo is not None else None
        hi_id = src.decode_id(hi) if hi is not None else None
        report.source_docs = src.count(lo, hi)
        report.generation_rows = gen.count(lo_id, hi_id)
        sample = _Sample(self.sample, self.rng)
        pending: list[Doc] | None = None
        chunk_lo: SourceId | None = lo_id
        for docs in src.iter_batches(lo, hi, None, self.chunk):
            if pending is not None:
                self._diff_chunk(report, sample, pending, chunk_lo, docs[0].id)
                chunk_lo = docs[0].id
            pending = docs
        # one chunk for the whole range: its count(*) is the range's, already known
        known = report.generation_rows if chunk_lo == lo_id else None
        self._diff_chunk(report, sample, pending or [], chunk_lo, hi_id, known)
        self._check_vectors(report, sample)
        log.info(
            "range_reconciled",
            range=seq,
            lo=lo,
            hi=hi,
            source=report.source_docs,
            rows=report.generation_rows,
            clean=report.clean,
            **{k: getattr(report, k) for k in KINDS if getattr(report, k)},
        )
        return report

    def _diff_chunk(
        self,
        report: RangeReport,
        sample: _Sample,
        docs: list[Doc],
        lo: SourceId | None,
        hi: SourceId | None,
        rows_known: int | None = None,
    ) -> None:
        gen = self.generation
        want: dict[SourceId, str] = {}
        texts: dict[SourceId, str] = {}
        empty: set[SourceId] = set()
        rejected: list[SourceId] = []
        for d in docs:
            if d.updated_at is not None and (
                self.updated_max is None or d.updated_at > self.updated_max
            ):
                self.updated_max = d.updated_at
            if d.error is not None or id_too_long(d.id, STR_ID_MAX) is not None:
                rejected.append(d.id)
            elif _has_text(d):
                assert d.text is not None
                want[d.id] = text_hash(d.text)
                texts[d.id] = d.text
            else:
                empty.add(d.id)
        report.empty_docs += len(empty)
        report.rejected_docs += len(rejected)
        for rid in rejected[: max(0, EXAMPLES - len(self.rejected_examples))]:
            text_id = str(rid)
            self.rejected_examples.append(text_id if len(text_id) <= 60 else text_id[:60] + "…")
        seen: set[SourceId] = set()
        extra: list[SourceId] = []
        stale: list[SourceId] = []
        wrong: list[SourceId] = []
        repeated: list[SourceId] = []
        ok: list[SourceId] = []
        scan_batch = min(SCAN_BATCH_MAX, max(self.chunk, 1000))
        for rows in gen.scan(lo, hi, fields=("id", "text_hash", "model"), batch_size=scan_batch):
            for row in rows:
                rid = row["id"]
                if rid in seen:  # a server that streams both copies of a duplicated key
                    repeated.append(rid)
                    continue
                seen.add(rid)
                expected = want.get(rid)
                bad = False
                if row.get("model") != self.tag:
                    wrong.append(rid)
                    bad = True
                if expected is None:
                    extra.append(rid)
                    continue
                if row.get("text_hash") != expected:
                    stale.append(rid)
                    bad = True
                if not bad:
                    ok.append(rid)
        missing = [i for i in want if i not in seen]
        dups = sorted(set(repeated), key=id_sort_key)
        rows_here: int | None = None
        if not dups:
            rows_here = rows_known if rows_known is not None else gen.count(lo, hi)
            if rows_here > len(seen):
                dups = self._find_duplicates(sorted(seen, key=id_sort_key), lo, hi)
        report.note("missing", missing)
        report.note("extra", extra)
        report.note("stale", stale)
        report.note("wrong_model", wrong)
        report.note("duplicated", dups)
        dup_set = set(dups)
        for rid in ok:
            text = texts[rid]
            if rid in dup_set or not self._sampleable(text):
                continue
            sample.offer(rid, text)
        if self.repairer is not None:
            if rows_here is not None and rows_here < len(seen):
                # the scan saw more ids than count(*) holds: this chunk is not trusted
                log.warning(
                    "repair_chunk_refused",
                    range=report.seq,
                    lo=lo,
                    hi=hi,
                    rows=rows_here,
                    seen=len(seen),
                    error="the scan and count(*) disagree; nothing deleted in this chunk",
                )
                self.repairer.refused += len(extra) + len(dups)
                extra, dups = [], []
            extra_set = set(self.repairer.delete_extra(self.source, extra))
            dup_done = self.repairer.delete_duplicates([d for d in dups if d not in extra_set])
            # a refused extra is left alone: neither deleted nor re-embedded
            skip = set(extra)
            again = [*missing, *stale, *wrong, *dup_done]
            self.repairer.reembed([i for i in dict.fromkeys(again) if i not in skip])

    def _sampleable(self, text: str) -> bool:
        """Documents the pipeline truncated were embedded from other text: skip them."""
        if self.embedder is None or self.max_input_tokens is None:
            return True
        return self.embedder.count_tokens(text) <= self.max_input_tokens

    def _find_duplicates(
        self, ids: list[SourceId], lo: SourceId | None, hi: SourceId | None
    ) -> list[SourceId]:
        """Bisect ``[lo, hi)`` by ``count(*)`` until the ids stored twice are alone."""
        found: list[SourceId] = []
        stack: list[tuple[list[SourceId], SourceId | None, SourceId | None]] = [(ids, lo, hi)]
        while stack:
            part, a, b = stack.pop()
            if not part or self.generation.count(a, b) <= len(part):
                continue
            if len(part) == 1:
                found.append(part[0])
                continue
            mid = len(part) // 2
            stack.append((part[:mid], a, part[mid]))
            stack.append((part[mid:], part[mid], b))
        return sorted(found, key=id_sort_key)

    def _check_vectors(self, report: RangeReport, sample: _Sample) -> None:
        if not sample.items or self.embedder is None:
            return
        ids = [i for i, _ in sample.items]
        fresh = self.embedder.embed([t for _, t in sample.items]).vectors
        stored = {r["id"]: r["vector"] for r in self.generation.get(ids, ["id", "vector"])}
        bad: list[SourceId] = []
        for doc_id, vec in zip(ids, fresh, strict=True):
            got = stored.get(doc_id)
            if got is None:  # deleted meanwhile: counted by the next run
                continue
            report.sampled += 1
            if cosine(np.asarray(got, dtype=np.float32), vec) < self.min_cosine:
                bad.append(doc_id)
        report.note("corrupted", bad)
        if bad and self.repairer is not None:
            self.repairer.reembed(bad)


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


# --- a whole migration -------------------------------------------------------------------


def reconcile_migration(
    db: Database,
    source: Source,
    generation: Generation,
    migration: Migration,
    embedder: Embedder | None,
    *,
    chunk: int = DEFAULT_CHUNK,
    sample: int = DEFAULT_SAMPLE,
    min_cosine: float = MIN_COSINE,
    max_input_tokens: int | None = None,
    repairer: Repairer | None = None,
    seed: int | None = None,
) -> ReconcileReport:
    """Reconcile every range of ``migration`` and record the result as a Reconcile row."""
    ModelIdentity.from_json(migration.target_identity).require_same(
        generation.identity, f"migration {migration.id}"
    )
    started = utcnow()
    t0 = time.perf_counter()
    rec = Reconciler(
        source,
        generation,
        embedder,
        chunk=chunk,
        sample=sample,
        min_cosine=min_cosine,
        max_input_tokens=max_input_tokens,
        repairer=repairer,
        seed=seed,
    )
    with db.session() as session:
        bounds = list(
            session.execute(
                select(Range.seq, Range.lo, Range.hi)
                .where(Range.migration_id == migration.id)
                .order_by(Range.seq)
            ).all()
        )
    log.info(
        "reconcile_started",
        migration=migration.id,
        generation=generation.name,
        ranges=len(bounds),
        repair=repairer is not None,
    )
    totals = dict.fromkeys(
        ("source_docs", "empty_docs", "rejected_docs", "generation_rows", "sampled", *KINDS), 0
    )
    dirty: list[RangeReport] = []
    clean = True
    for seq, lo, hi in bounds:
        rr = rec.reconcile_range(seq, lo, hi)
        for key in totals:
            totals[key] += getattr(rr, key)
        if not rr.clean:
            clean = False
            if len(dirty) < DETAIL_RANGES:
                dirty.append(rr)
    seconds = time.perf_counter() - t0
    finished = utcnow()
    report = ReconcileReport(
        migration_id=migration.id,
        generation=generation.name,
        model=generation.identity.tag,
        clean=clean,
        ranges=len(bounds),
        dirty_ranges=dirty,
        chunk=chunk,
        sample_per_range=sample,
        seconds=seconds,
        ids_per_second=(totals["source_docs"] + totals["extra"]) / seconds if seconds else 0.0,
        source_updated_max=rec.updated_max.isoformat() if rec.updated_max else None,
        repair=(
            {
                "deleted": repairer.deleted,
                "enqueued": repairer.enqueued,
                "refused": repairer.refused,
            }
            if repairer is not None
            else None
        ),
        started_at=started,
        finished_at=finished,
        rejected_examples=rec.rejected_examples,
        **totals,
    )
    details = report.to_dict()
    for key in ("clean", "generation", "migration_id", "started_at", "finished_at", *totals):
        if key != "rejected_docs":  # no column of its own
            details.pop(key, None)
    with db.session() as session:
        row = Reconcile(
            migration_id=migration.id,
            generation=generation.name,
            clean=clean,
            source_docs=totals["source_docs"],
            generation_rows=totals["generation_rows"],
            missing=totals["missing"],
            extra=totals["extra"],
            duplicated=totals["duplicated"],
            stale=totals["stale"],
            wrong_model=totals["wrong_model"],
            corrupted=totals["corrupted"],
            details=details,
            started_at=started,
            finished_at=finished,
        )
        session.add(row)
        session.flush()
        report.reconcile_id = row.id
    log.info(
        "reconcile_finished",
        migration=migration.id,
        generation=generation.name,
        clean=clean,
        reconcile=report.reconcile_id,
        seconds=round(seconds, 2),
        **{k: v for k, v in totals.items() if v},
    )
    return report


def latest_reconcile(db: Database, migration_id: int) -> Reconcile | None:
    """The newest Reconcile row of a migration (the cutover gate), or ``None``."""
    return latest_of_migration(db, Reconcile, migration_id, Reconcile.id)
