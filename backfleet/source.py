"""Reading the corpus: bounds, quantile split points, keyset batches.

The source is one SQL table read through SQLAlchemy. Table and column names come from
settings; they are validated, then the table is reflected, so every identifier in SQL is a
reflected, quoted object — never pasted text. Batches are keyset (``id > :cursor ORDER BY id
LIMIT :n``), never OFFSET. Text ids compare bytewise (``COLLATE "C"`` on Postgres), the
order Milvus uses, so a range means the same ids in both.

Bytes that are not UTF-8 (a ``SQL_ASCII`` Postgres database stores any bytes) are a data
error of one row, not an outage: the server refuses the whole statement, so the rows of that
statement are read again as bytes and decoded here, one by one. A row whose text does not
decode is a :class:`Doc` with ``text=None`` and an ``error`` (the byte offset); one whose id
does not decode gets a safe ``backslashreplace`` id. The pipeline dead-letters both.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    func,
    select,
)
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    NoSuchTableError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.sql.elements import ColumnElement

from backfleet.db.session import check_reachable
from backfleet.errors import (
    ConfigError,
    DatabaseUnavailable,
    PlanError,
    SourceDataError,
    SourceError,
)
from backfleet.logs import get_logger
from backfleet.settings import SourceSettings

log = get_logger("backfleet.source")

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")

SourceId = int | str
#: SQLSTATEs of a value the server cannot send as UTF-8 (character_not_in_repertoire,
#: untranslatable_character)
DECODE_SQLSTATES = frozenset({"22021", "22P05"})


def validate_identifier(value: str, setting: str) -> str:
    """Accept a plain SQL identifier; refuse anything that would need quoting tricks."""
    if not IDENT_RE.match(value):
        raise ConfigError(
            f"{setting} = {value!r} is not a plain SQL identifier",
            hint=f"set {setting} to letters, digits and _ (starting with a letter or _)",
        )
    return value


def text_hash(text: str) -> str:
    """The hash stored beside every vector: sha256 of the UTF-8 text, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def id_too_long(doc_id: SourceId, max_bytes: int) -> str | None:
    """Why a text id cannot be a generation's primary key (Milvus counts UTF-8 bytes), or
    ``None`` when it fits."""
    if not isinstance(doc_id, str):
        return None
    size = len(doc_id.encode("utf-8", "surrogatepass"))
    if size <= max_bytes:
        return None
    return (
        f"id is {size} bytes in UTF-8 ({len(doc_id)} characters); "
        f"the generation's primary key holds at most {max_bytes}"
    )


class Doc(NamedTuple):
    """One source row. A named tuple: a batch builds hundreds of them per read."""

    id: SourceId
    text: str | None
    updated_at: datetime | None = None
    #: why the row cannot be embedded as read (its text or id is not UTF-8); text is None
    error: str | None = None


class Source:
    """One table of documents: ``(id, text[, updated_at])``."""

    def __init__(self, engine: Engine, settings: SourceSettings) -> None:
        self.engine = engine
        self.settings = settings
        schema: str | None = None
        table_name = settings.table
        if "." in table_name:
            schema, table_name = table_name.split(".", 1)
            validate_identifier(schema, "source.table (schema part)")
        validate_identifier(table_name, "source.table")
        validate_identifier(settings.id_column, "source.id_column")
        validate_identifier(settings.text_column, "source.text_column")
        if settings.updated_at_column:
            validate_identifier(settings.updated_at_column, "source.updated_at_column")
        check_reachable(engine, what="source.url")
        try:
            self.table = Table(table_name, MetaData(), schema=schema, autoload_with=engine)
        except NoSuchTableError:
            raise SourceError(
                f"source table {settings.table!r} does not exist in "
                f"{engine.url.render_as_string(hide_password=True)}",
                hint="set source.table to an existing table",
            ) from None
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot read the source table: {exc.orig}") from None
        self.id_col = self._column(settings.id_column, "source.id_column")
        self.text_col = self._column(settings.text_column, "source.text_column")
        self.updated_col = (
            self._column(settings.updated_at_column, "source.updated_at_column")
            if settings.updated_at_column
            else None
        )
        #: what every read returns, in ``Doc`` order
        self.columns = [self.id_col, self.text_col]
        if self.updated_col is not None:
            self.columns.append(self.updated_col)
        id_type = self.id_col.type
        if isinstance(id_type, Integer):
            self.id_type = "int"
        elif isinstance(id_type, String | Text):
            self.id_type = "str"
        else:
            raise PlanError(
                f"source.id_column {settings.id_column!r} has type {id_type}; "
                "the planner splits only integer or text ids",
                hint="point source.id_column at an integer or text primary key",
            )
        self._postgres = engine.dialect.name == "postgresql"
        self._convert = self._row_converter()
        # the source is only read: no BEGIN/ROLLBACK round trips around each batch
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._keyset_cache: dict[
            tuple[bool, bool, bool], tuple[str, tuple[str, ...] | None, dict[str, Any]]
        ] = {}

    def _column(self, name: str, setting: str) -> Column[Any]:
        if name not in self.table.c:
            known = ", ".join(self.table.c.keys())
            raise SourceError(
                f"column {name!r} not found in source table {self.settings.table!r} "
                f"(columns: {known})",
                hint=f"set {setting} to one of those columns",
            )
        return self.table.c[name]

    # --- ids ----------------------------------------------------------------------------

    @property
    def key(self) -> ColumnElement[Any]:
        """The id column as compared and ordered: bytewise for text ids on Postgres."""
        if self.id_type == "str" and self._postgres:
            return self.id_col.collate("C")
        return self.id_col

    def decode_id(self, value: str) -> SourceId:
        return int(value) if self.id_type == "int" else value

    @staticmethod
    def encode_id(value: SourceId) -> str:
        return str(value)

    def _in_range(self, lo: str | None, hi: str | None) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        if lo is not None:
            conds.append(self.key >= self.decode_id(lo))
        if hi is not None:
            conds.append(self.key < self.decode_id(hi))
        return conds

    @functools.cached_property
    def server_encoding(self) -> str:
        """The source database's encoding (``UTF8``, ``SQL_ASCII``, …); ``UTF8`` off Postgres."""
        if not self._postgres:
            return "UTF8"
        with self._conn() as conn:
            return str(conn.exec_driver_sql("SHOW server_encoding").scalar_one())

    # --- planning -----------------------------------------------------------------------

    def long_ids(self, max_bytes: int, examples: int = 3) -> tuple[int, list[str]]:
        """``(count, a few examples)`` of text ids longer than ``max_bytes`` UTF-8 bytes."""
        if self.id_type != "str":
            return 0, []
        size = (
            func.octet_length(self.id_col)
            if self._postgres
            else func.length(cast(self.id_col, LargeBinary))
        )
        where = size > max_bytes
        with self._conn() as conn:
            count = int(
                conn.execute(select(func.count()).select_from(self.table).where(where)).scalar_one()
            )
            if not count:
                return 0, []
            raw = select(self._raw(self.id_col)).where(where).order_by(self.key).limit(examples)
            found = [bytes(r[0]).decode("utf-8", "backslashreplace") for r in conn.execute(raw)]
        return count, found

    def stats(self) -> tuple[int, int]:
        """``(documents, characters of text)`` computed in the database."""
        stmt = select(func.count(), func.coalesce(func.sum(func.length(self.text_col)), 0))
        with self._conn() as conn:
            row = conn.execute(stmt.select_from(self.table)).one()
        return int(row[0]), int(row[1])

    def count(self, lo: str | None = None, hi: str | None = None) -> int:
        stmt = (
            select(func.count()).select_from(self.table).where(and_(True, *self._in_range(lo, hi)))
        )
        with self._conn() as conn:
            return int(conn.execute(stmt).scalar_one())

    def split_points(self, range_size: int) -> list[SourceId]:
        """Ids at every ``range_size``-th position (quantiles), computed in the database.

        ``row_number()`` runs in the database; only the split points come back to Python.
        """
        if range_size <= 0:
            raise PlanError("range size must be positive", hint="backfill.range_size")
        rn = func.row_number().over(order_by=self.key).label("rn")
        numbered = select(self.id_col.label("id"), rn).select_from(self.table).subquery()
        where = (numbered.c.rn > 1, (numbered.c.rn - 1) % range_size == 0)
        stmt = select(numbered.c.id).where(*where).order_by(numbered.c.rn)
        try:
            with self._conn() as conn:
                return [row[0] for row in conn.execute(stmt)]
        except SourceDataError:
            pass
        # an id that is not UTF-8 cannot bound a range: that range joins the next one
        raw = select(self._raw(numbered.c.id)).where(*where).order_by(numbered.c.rn)
        with self._conn() as conn:
            values = [bytes(row[0]) for row in conn.execute(raw)]
        points: list[SourceId] = []
        for value in values:
            with contextlib.suppress(UnicodeDecodeError):
                points.append(value.decode("utf-8"))
        return points

    # --- reading ------------------------------------------------------------------------

    def batch(self, lo: str | None, hi: str | None, after: str | None, limit: int) -> list[Doc]:
        """Up to ``limit`` documents of ``[lo, hi)`` with id > ``after``, in id order."""
        conds = self._in_range(lo, hi)
        if after is not None:
            conds.append(self.key > self.decode_id(after))
        stmt = select(*self.columns).where(and_(True, *conds)).order_by(self.key).limit(limit)
        with self._conn() as conn:
            try:
                rows = conn.execute(stmt).all()
            except (DBAPIError, UnicodeDecodeError) as exc:
                if not is_decode_error(exc):
                    raise
                conn.rollback()
                return [doc for doc, _ in self._read_raw(conn, conds, limit)]
        return [Doc(*row) for row in rows]

    def iter_batches(
        self, lo: str | None, hi: str | None, after: str | None, limit: int
    ) -> Iterator[list[Doc]]:
        """Every document of ``[lo, hi)`` with id > ``after``, in keyset batches of ``limit``.

        The walk holds one connection and sends one precompiled statement per batch (the same
        SQL as :meth:`batch`): per batch this costs a third of the worker CPU of building,
        compiling and checking out anew (docs/benchmarks.md).
        """
        first = self._keyset_sql(lo is not None, hi is not None, False)
        rest = self._keyset_sql(lo is not None, hi is not None, True)
        values: dict[str, Any] = {"n": limit}
        if lo is not None:
            values["lo"] = self.decode_id(lo)
        if hi is not None:
            values["hi"] = self.decode_id(hi)
        #: the keyset position: the last id read, or its bytes when it is not UTF-8
        cursor: SourceId | bytes | None = None if after is None else self.decode_id(after)
        with self._conn() as conn:
            while True:
                docs: list[Doc] | None = None
                last: SourceId | bytes | None = None
                if not isinstance(cursor, bytes):
                    if cursor is None:
                        sql, names, defaults = first
                    else:
                        sql, names, defaults = rest
                        values["after"] = cursor
                    bound = {**defaults, **values}
                    params: Any = tuple(bound[n] for n in names) if names is not None else bound
                    try:
                        rows = conn.exec_driver_sql(sql, params).fetchall()
                    except (DBAPIError, UnicodeDecodeError) as exc:
                        if not is_decode_error(exc):
                            raise
                        conn.rollback()
                    else:
                        if self._convert is None:
                            docs = [Doc(*row) for row in rows]
                        else:  # driver SQL skips SQLAlchemy's result types (SQLite: timestamps)
                            docs = [Doc(*self._convert(row)) for row in rows]
                        last = docs[-1].id if docs else None
                if docs is None:  # a row of this batch (or the cursor) is not UTF-8
                    conds = self._in_range(lo, hi)
                    if isinstance(cursor, bytes):
                        conds.append(self._raw(self.id_col) > cursor)
                    elif cursor is not None:
                        conds.append(self.key > cursor)
                    read = self._read_raw(conn, conds, limit)
                    docs = [doc for doc, _ in read]
                    last = read[-1][1] if read else None
                if not docs:
                    return
                yield docs
                cursor = last

    def _row_converter(self) -> Callable[[Sequence[Any]], tuple[Any, ...]] | None:
        """What SQLAlchemy's result types would do to a keyset row on this dialect, or ``None``
        when the driver's values are already right (psycopg: ints, strings, datetimes)."""
        dialect = self.engine.dialect
        procs = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in self.columns]
        if all(p is None for p in procs):
            return None

        def convert(row: Sequence[Any]) -> tuple[Any, ...]:
            return tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True))

        return convert

    def _keyset_sql(
        self, lo: bool, hi: bool, after: bool
    ) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        """The keyset statement compiled for this dialect, its positional parameter order
        (``None`` for named parameters) and the values of literals the dialect bound itself.
        Identifiers come from the reflected table."""
        key = (lo, hi, after)
        cached = self._keyset_cache.get(key)
        if cached is not None:
            return cached
        conds: list[ColumnElement[bool]] = []
        if lo:
            conds.append(self.key >= bindparam("lo", type_=self.id_col.type))
        if hi:
            conds.append(self.key < bindparam("hi", type_=self.id_col.type))
        if after:
            conds.append(self.key > bindparam("after", type_=self.id_col.type))
        stmt = select(*self.columns).order_by(self.key).limit(bindparam("n", type_=Integer()))
        if conds:
            stmt = stmt.where(and_(*conds))
        compiled = stmt.compile(dialect=self.engine.dialect)
        # literals a dialect binds itself (SQLite: OFFSET 0) keep their compiled values
        defaults = {k: v for k, v in compiled.params.items() if k not in ("lo", "hi", "after", "n")}
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        result = (str(compiled), names, defaults)
        self._keyset_cache[key] = result
        return result

    # --- ids only (catch-up) ------------------------------------------------------------

    def id_pages(self, lo: str | None, hi: str | None, limit: int) -> Iterator[list[SourceId]]:
        """Every id of ``[lo, hi)`` in keyset pages of ``limit``; an id that is not UTF-8 comes
        back as its ``backslashreplace`` text (the id its dead letter has)."""
        cursor: SourceId | bytes | None = None
        with self._conn() as conn:
            while True:
                conds = self._in_range(lo, hi)
                page: list[SourceId] | None = None
                last: SourceId | bytes | None = None
                if not isinstance(cursor, bytes):
                    if cursor is not None:
                        conds.append(self.key > cursor)
                    stmt = select(self.id_col).where(and_(True, *conds)).order_by(self.key)
                    try:
                        page = [row[0] for row in conn.execute(stmt.limit(limit))]
                    except (DBAPIError, UnicodeDecodeError) as exc:
                        if not is_decode_error(exc):
                            raise
                        conn.rollback()
                    else:
                        last = page[-1] if page else None
                if page is None:
                    if isinstance(cursor, bytes):
                        conds.append(self._raw(self.id_col) > cursor)
                    raw = select(self._raw(self.id_col)).where(and_(True, *conds))
                    values = [
                        bytes(r[0]) for r in conn.execute(raw.order_by(self.key).limit(limit))
                    ]
                    page = [_text_id(v) for v in values]
                    last = values[-1] if values else None
                    if last is not None and _decodes(last):
                        last = page[-1]
                if not page:
                    return
                yield page
                cursor = last

    def ids_where(self, *conds: ColumnElement[bool]) -> list[SourceId]:
        """The ids of the rows matching ``conds`` (ids that are not UTF-8: as in ``id_pages``)."""
        stmt = select(self.id_col).where(and_(True, *conds))
        with self._conn() as conn:
            try:
                return [row[0] for row in conn.execute(stmt)]
            except (DBAPIError, UnicodeDecodeError) as exc:
                if not is_decode_error(exc):
                    raise
                conn.rollback()
                raw = select(self._raw(self.id_col)).where(and_(True, *conds))
                return [_text_id(bytes(row[0])) for row in conn.execute(raw)]

    def ids_after(self, after: str) -> tuple[int, SourceId | None]:
        """``(count, smallest id)`` of the documents with an id above ``after`` (bytewise); an
        id that is not UTF-8 comes back as its ``backslashreplace`` text, which sorts just
        below it and above ``after``: it bounds a range the same way."""
        where = self.key > self.decode_id(after)
        with self._conn() as conn:
            try:
                row = conn.execute(select(func.count(), func.min(self.key)).where(where)).one()
                return int(row[0]), row[1]
            except (DBAPIError, UnicodeDecodeError) as exc:
                if not is_decode_error(exc):
                    raise
                conn.rollback()
                count = int(conn.execute(select(func.count()).where(where)).scalar_one())
                raw = select(self._raw(self.id_col)).where(where).order_by(self.key).limit(1)
                first = conn.execute(raw).scalar()
                return count, None if first is None else _text_id(bytes(first))

    def fetch(self, ids: Sequence[SourceId]) -> list[Doc]:
        """Documents by id (missing ids are simply absent)."""
        if not ids:
            return []
        where = self.id_col.in_(list(ids))
        stmt = select(*self.columns).where(where).order_by(self.key)
        with self._conn() as conn:
            try:
                rows = conn.execute(stmt).all()
            except (DBAPIError, UnicodeDecodeError) as exc:
                if not is_decode_error(exc):
                    raise
                conn.rollback()
                return [doc for doc, _ in self._read_raw(conn, [where], None)]
        return [Doc(*r) for r in rows]

    # --- bytes that are not UTF-8 -------------------------------------------------------

    def _raw(self, col: ColumnElement[Any]) -> ColumnElement[Any]:
        """A text column's stored bytes, decoded neither by the server nor by the driver."""
        if self._postgres:
            return func.convert_to(col, "SQL_ASCII", type_=LargeBinary)
        return cast(col, LargeBinary)

    def _read_raw(
        self, conn: Any, conds: list[ColumnElement[bool]], limit: int | None
    ) -> list[tuple[Doc, SourceId | bytes]]:
        """The rows of a read the server refused to send as UTF-8, as bytes, decoded here one
        by one: ``(doc, its keyset position)`` (the id's bytes when the id does not decode)."""
        cols: list[ColumnElement[Any]] = [
            self._raw(self.id_col) if self.id_type == "str" else self.id_col,
            self._raw(self.text_col),
        ]
        if self.updated_col is not None:
            cols.append(self.updated_col)
        stmt = select(*cols).where(and_(True, *conds)).order_by(self.key)
        if limit is not None:
            stmt = stmt.limit(limit)
        out = [self._decode_raw(row) for row in conn.execute(stmt)]
        bad = [doc for doc, _ in out if doc.error]
        if bad:
            log.warning("source_rows_undecodable", count=len(bad), first=str(bad[0].id)[:80])
        return out

    @staticmethod
    def _decode_raw(row: Sequence[Any]) -> tuple[Doc, SourceId | bytes]:
        ident: Any = row[0]
        position: SourceId | bytes = ident
        error: str | None = None
        if isinstance(ident, bytes | memoryview):
            raw_id = bytes(ident)
            try:
                ident = position = raw_id.decode("utf-8")
            except UnicodeDecodeError as exc:
                ident, position = raw_id.decode("utf-8", "backslashreplace"), raw_id
                error = f"id is not valid UTF-8 at byte {exc.start}"
        text: str | None = None
        if row[1] is not None and error is None:
            try:
                text = bytes(row[1]).decode("utf-8")
            except UnicodeDecodeError as exc:
                error = f"text is not valid UTF-8 at byte {exc.start}"
        updated = row[2] if len(row) > 2 else None
        return Doc(ident, text, updated, error), position

    def _conn(self) -> Any:
        return _ConvertErrors(self._reader)


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text_id(value: bytes) -> str:
    """A text id's bytes as text: itself when UTF-8, else with ``\\xNN`` for the bad bytes."""
    return value.decode("utf-8", "backslashreplace")


def is_decode_error(exc: BaseException) -> bool:
    """The server (or the driver) could not turn a stored value into UTF-8."""
    if isinstance(exc, UnicodeDecodeError):  # SQLite (backfleet.db.session's text factory)
        return True
    orig = getattr(exc, "orig", None)
    if isinstance(orig, UnicodeDecodeError):
        return True
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state in DECODE_SQLSTATES


class _ConvertErrors:
    """A connection context that turns driver errors into backfleet errors, once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cm: Any = None

    def __enter__(self) -> Any:
        try:
            self._cm = self.engine.connect()
            return self._cm.__enter__()
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot reach the source database: {exc.orig}") from exc

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self._cm.__exit__(et, ev, tb)
        if isinstance(ev, DBAPIError | UnicodeDecodeError) and is_decode_error(ev):
            raise SourceDataError(
                f"a source row is not valid UTF-8: {getattr(ev, 'orig', ev)}",
                hint="store the texts and ids of source.table as UTF-8",
            ) from ev
        if isinstance(ev, OperationalError):
            raise DatabaseUnavailable(f"source database error: {ev.orig}") from ev
        if isinstance(ev, ProgrammingError | DataError):
            raise SourceError(f"source query failed: {ev.orig}") from ev
