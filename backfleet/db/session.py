"""Engines and session factories for the checkpoint and source databases."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backfleet.errors import ConfigError, DatabaseUnavailable
from backfleet.settings import redact_url


def make_engine(url: str, *, what: str = "database_url", pool_size: int = 4) -> Engine:
    """An engine with pre-ping; SQLite gets WAL and a busy timeout for the demo; Postgres
    talks UTF-8 (``client_encoding``), so bytes that are not UTF-8 in a ``SQL_ASCII``
    database are refused by the server per statement (``backfleet.source`` isolates them).

    ``pool_size`` connections stay open, as many again may be opened under load.
    """
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
    if url.startswith("postgresql") and "client_encoding" not in url:
        # texts arrive as UTF-8 whatever the server's encoding; without it a SQL_ASCII
        # database hands psycopg bytes and SQLAlchemy's first connect fails (issue 13)
        kwargs["connect_args"] = {"client_encoding": "utf8"}
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # bad URL or missing driver
        raise ConfigError(
            f"cannot use {what} {redact_url(url)}: {exc.__class__.__name__}: {exc}",
            hint=f"set {what} to a SQLAlchemy URL such as postgresql+psycopg://user@host/db",
        ) from None
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # TEXT that is not UTF-8 raises UnicodeDecodeError (a data error of one row), not
            # the driver's OperationalError (which reads as an outage)
            dbapi_conn.text_factory = _utf8_text

    return engine


def _utf8_text(value: bytes) -> str:
    return value.decode("utf-8")


def check_reachable(engine: Engine, *, what: str = "database_url") -> None:
    """Raise :class:`DatabaseUnavailable` with one clear line if the database is down."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (OperationalError, DBAPIError) as exc:
        reason = _first_line(exc)
        raise DatabaseUnavailable(
            f"cannot reach {what} {engine.url.render_as_string(hide_password=True)}: {reason}",
            hint=f"start the database or fix {what}",
        ) from None


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig if exc.orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reset_commit_mode(conn: Connection) -> None:
    """Back to synchronous commits before the pool hands the connection to anyone else; a
    connection that cannot be reset is discarded instead."""
    try:
        conn.rollback()
        conn.exec_driver_sql("RESET synchronous_commit")
        conn.commit()
    except Exception:
        conn.invalidate()


class Database:
    """The checkpoint database: an engine and a session factory."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A short transaction: commit on success, roll back on error; driver errors converted."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:
                session.rollback()
                raise DatabaseUnavailable(f"checkpoint database error: {_first_line(exc)}") from exc
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """A short Core transaction (no ORM session): for the per-batch statements.

        On ``conn`` when given (a connection the caller holds, checked out and pinged once,
        used by one thread at a time), else on a connection from the pool. Commits on
        success, rolls back on error; driver errors converted like ``session``.
        """
        try:
            if conn is None:
                with self.engine.begin() as fresh:
                    yield fresh
            else:
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise DatabaseUnavailable(f"checkpoint database error: {_first_line(exc)}") from exc

    @contextmanager
    def connection(self, *, async_commit: bool = False) -> Iterator[Connection]:
        """A connection held by the caller for many short transactions (``transaction(conn)``):
        checked out and pinged once. Driver errors converted like ``session``.

        ``async_commit`` (PostgreSQL; ignored elsewhere): its commits return without waiting
        for the WAL to reach disk (``synchronous_commit = off`` for this connection only, reset
        before it goes back to the pool). A Postgres crash can then lose the last few hundred
        milliseconds of its commits, never reorder or half-apply them, and any later
        synchronous commit (from any connection) makes them durable first. For the per-batch
        cursor advances only: a lost advance moves a cursor back, and the batches after it are
        upserted again (docs/operations.md).
        """
        relaxed = async_commit and self.engine.dialect.name == "postgresql"
        try:
            with self.engine.connect() as conn:
                if relaxed:
                    conn.exec_driver_sql("SET synchronous_commit TO off")
                    conn.commit()
                try:
                    yield conn
                finally:
                    if relaxed:
                        _reset_commit_mode(conn)
        except OperationalError as exc:
            raise DatabaseUnavailable(f"checkpoint database error: {_first_line(exc)}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
