"""Change detection for catch-up: what differs between the source and the shadow, per range.

Pure decisions (the diff of two id → text-hash maps, the time a range is compared from, the
window of a hash sweep, the clock margin) are plain functions; the scans that feed them read
the source through SQLAlchemy (ids, ``updated_at``, texts) and the shadow through
:meth:`Generation.scan` (ids and text hashes, Strong consistency). A document whose text is
blank is never indexed (the backfill skips it), so "expected in the shadow" means "in the
source with non-blank text" (and readable as UTF-8, with an id the generation can hold: the
backfill dead-letters the others).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from backfleet.errors import DatabaseUnavailable
from backfleet.source import Doc, Source, SourceId, id_too_long, text_hash
from backfleet.vectorstore import Generation
from backfleet.vectorstore.generation import STR_ID_MAX


@dataclass
class RangeChanges:
    """Ids of one range to re-embed (``changed``, ``created``) or remove (``deleted``)."""

    changed: list[SourceId] = field(default_factory=list)
    created: list[SourceId] = field(default_factory=list)
    deleted: list[SourceId] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.changed) + len(self.created) + len(self.deleted)

    def extend(self, other: RangeChanges) -> None:
        self.changed.extend(other.changed)
        self.created.extend(other.created)
        self.deleted.extend(other.deleted)


def blank(text: str | None) -> bool:
    return text is None or not text.strip()


def source_hash(text: str | None) -> str | None:
    """The hash a shadow row must carry for this source text; ``None``: must not be indexed."""
    return None if blank(text) else text_hash(text or "")


def doc_hash(doc: Doc) -> str | None:
    """:func:`source_hash` of a document; ``None`` also when the pipeline dead-letters it from
    the source alone (its text or id is not UTF-8, its id is over the primary key's limit)."""
    if doc.error is not None or id_too_long(doc.id, STR_ID_MAX) is not None:
        return None
    return source_hash(doc.text)


def diff_hashes(
    source: Mapping[SourceId, str | None], shadow: Mapping[SourceId, str]
) -> RangeChanges:
    """Compare ``id → hash`` of the source (``None`` for blank text) with the shadow's."""
    out = RangeChanges()
    for ident, wanted in source.items():
        have = shadow.get(ident)
        if wanted is None:
            if ident in shadow:
                out.deleted.append(ident)
        elif have is None:
            out.created.append(ident)
        elif have != wanted:
            out.changed.append(ident)
    out.deleted.extend(i for i in shadow if i not in source)
    return out


def effective_margin(configured: float, measured_skew: float | None) -> float:
    """The clock margin a pass uses: the setting, widened by a measured skew beyond it."""
    if measured_skew is None or abs(measured_skew) <= configured:
        return configured
    return abs(measured_skew) + configured


def compare_from(
    read_started_at: datetime | None, previous_pass: datetime | None, margin: float
) -> datetime | None:
    """Documents updated after this instant need a look; ``None``: the whole range does.

    A range's documents were read at ``read_started_at`` (worker clock), and a previous pass
    already compared everything up to its own start: the later of the two, minus the margin.
    """
    if read_started_at is None:
        return None
    start = _aware(read_started_at)
    if previous_pass is not None:
        start = max(start, _aware(previous_pass))
    return start - timedelta(seconds=margin)


def sweep_window(
    ranges: Sequence[tuple[int, int]], start_seq: int, budget: int
) -> tuple[list[int], int, bool]:
    """Ranges ``(seq, docs)`` a hash pass scans from ``start_seq`` within ``budget`` docs.

    Returns the chosen seqs, the seq the next pass starts from, and whether this window
    reaches the end of the corpus (the sweep is complete). At least one range is chosen.
    """
    ordered = sorted(ranges)
    todo = [r for r in ordered if r[0] >= start_seq] or ordered
    chosen: list[int] = []
    used = 0
    for seq, docs in todo:
        if chosen and used + docs > budget:
            break
        chosen.append(seq)
        used += docs
    complete = bool(chosen) and chosen[-1] == ordered[-1][0]
    next_seq = 0 if complete else (chosen[-1] + 1 if chosen else 0)
    return chosen, next_seq, complete


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# --- scans ------------------------------------------------------------------------------


def _bounds(source: Source, lo: str | None, hi: str | None) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if lo is not None:
        conds.append(source.key >= source.decode_id(lo))
    if hi is not None:
        conds.append(source.key < source.decode_id(hi))
    return conds


def source_ids(source: Source, lo: str | None, hi: str | None, batch: int) -> set[SourceId]:
    """Every id of ``[lo, hi)`` (keyset pages of ids only; an id that is not UTF-8 as the
    text of its dead letter)."""
    out: set[SourceId] = set()
    for page in source.id_pages(lo, hi, batch):
        out.update(page)
    return out


def updated_since(
    source: Source, lo: str | None, hi: str | None, since: datetime | None
) -> set[SourceId] | None:
    """Ids of ``[lo, hi)`` updated after ``since`` (or with no ``updated_at``).

    ``None`` means "every id" (no ``since``, or no ``updated_at`` column).
    """
    if since is None or source.updated_col is None:
        return None
    col = source.updated_col
    return set(source.ids_where(*_bounds(source, lo, hi), or_(col > since, col.is_(None))))


def source_hashes(
    source: Source, lo: str | None, hi: str | None, batch: int
) -> dict[SourceId, str | None]:
    """``id → hash`` (``None`` for blank text) of every document of ``[lo, hi)``."""
    return {d.id: doc_hash(d) for docs in source.iter_batches(lo, hi, None, batch) for d in docs}


def fetch_hashes(source: Source, ids: Iterable[SourceId], batch: int) -> dict[SourceId, str | None]:
    """``id → hash`` of the named documents that still exist."""
    out: dict[SourceId, str | None] = {}
    for part in chunks(sorted(ids, key=str), batch):
        for d in source.fetch(part):
            out[d.id] = doc_hash(d)
    return out


def shadow_hashes(
    gen: Generation, source: Source, lo: str | None, hi: str | None, batch: int
) -> dict[SourceId, str]:
    """``id → text_hash`` of the shadow's rows in ``[lo, hi)``."""
    lo_v = source.decode_id(lo) if lo is not None else None
    hi_v = source.decode_id(hi) if hi is not None else None
    return {
        r["id"]: str(r["text_hash"])
        for rows in gen.scan(lo_v, hi_v, fields=("id", "text_hash"), batch_size=batch)
        for r in rows
    }


def confirm_gone(
    source: Source, gen: Generation, ids: Sequence[SourceId], batch: int
) -> list[SourceId]:
    """The ids of ``ids`` that may be deleted from the shadow, each confirmed *by exact id*:
    stored in the shadow and absent from the source (or blank there)."""
    out: list[SourceId] = []
    for part in chunks(ids, batch):
        alive = {d.id for d in source.fetch(part) if not blank(d.text)}
        stored = {r["id"] for r in gen.get(part, ["id"])}
        out.extend(i for i in part if i in stored and i not in alive)
    return out


def ids_after(source: Source, after: str) -> tuple[int, SourceId | None]:
    """``(count, smallest id)`` of the documents with an id above ``after``."""
    # min() of the key: ordered like the ranges (bytewise for text ids)
    return source.ids_after(after)


def measure_skew(source: Source) -> float | None:
    """Seconds the source database's clock is ahead of this process's (None: unknown)."""
    try:
        with source.engine.connect() as conn:
            before = datetime.now(UTC)
            value = conn.execute(select(func.current_timestamp())).scalar()
            after = datetime.now(UTC)
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot read the source clock: {exc.orig}") from exc
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS' in UTC
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    local = before + (after - before) / 2
    return (_aware(value) - local).total_seconds()
