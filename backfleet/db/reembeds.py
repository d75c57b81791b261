"""Re-embed requests: named documents to embed again (dead-letter retry, repairs).

Postgres work like ranges: each request is a row, the task marks it done, and the reaper
re-sends a request still pending ``resend_after_seconds`` after its last task went out (a
worker killed while holding it leaves the message in Redis ``unacked`` for the visibility
timeout). After ``max_attempts`` sends it is ``failed`` with the reason.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update

from backfleet.db.checkpoint import utcnow
from backfleet.db.models import Migration, ReembedRequest, ReembedState
from backfleet.db.session import Database
from backfleet.lifecycle import TERMINAL


def record(db: Database, migration_id: int, doc_ids: list[str]) -> int:
    """A pending request, counted as sent once (its task goes out now)."""
    now = utcnow()
    with db.session() as session:
        req = ReembedRequest(
            migration_id=migration_id,
            doc_ids=list(doc_ids),
            state=ReembedState.PENDING,
            attempts=1,
            dispatched_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(req)
        session.flush()
        return int(req.id)


def started(db: Database, request_id: int) -> None:
    """A worker began the request: the reaper's clock restarts from now."""
    now = utcnow()
    with db.session() as session:
        session.execute(
            update(ReembedRequest)
            .where(ReembedRequest.id == request_id, ReembedRequest.state == ReembedState.PENDING)
            .values(dispatched_at=now, updated_at=now)
        )


def pending_count(db: Database) -> int:
    """Requests not done yet, of every migration (each has a message somewhere)."""
    with db.session() as session:
        return int(
            session.execute(
                select(func.count()).where(ReembedRequest.state == ReembedState.PENDING)
            ).scalar_one()
        )


def finish(db: Database, request_id: int) -> None:
    now = utcnow()
    with db.session() as session:
        session.execute(
            update(ReembedRequest)
            .where(ReembedRequest.id == request_id, ReembedRequest.state == ReembedState.PENDING)
            .values(state=ReembedState.DONE, finished_at=now, updated_at=now, last_error=None)
        )


def note_error(db: Database, request_id: int, error: str, *, final: bool) -> None:
    """Keep a task's error; ``final`` (retrying cannot help): the request is failed."""
    now = utcnow()
    values: dict[str, object] = {"last_error": error[:2000], "updated_at": now}
    if final:
        values.update(state=ReembedState.FAILED, finished_at=now)
    with db.session() as session:
        session.execute(
            update(ReembedRequest)
            .where(ReembedRequest.id == request_id, ReembedRequest.state == ReembedState.PENDING)
            .values(**values)
        )


def take_due(
    db: Database, sent_before: datetime, max_attempts: int
) -> list[tuple[int, int, list[str]]]:
    """Pending requests whose last task went out before ``sent_before``: stamped as sent
    again and returned (id, migration, doc ids); those sent ``max_attempts`` times fail."""
    now = utcnow()
    with db.session() as session:
        rows = session.execute(
            select(ReembedRequest)
            .join(Migration, Migration.id == ReembedRequest.migration_id)
            .where(
                ReembedRequest.state == ReembedState.PENDING,
                ReembedRequest.dispatched_at < sent_before,
                Migration.state.not_in(TERMINAL),
            )
            .order_by(ReembedRequest.id)
            .limit(1000)
            .with_for_update(skip_locked=True, of=ReembedRequest)
        ).scalars()
        due = []
        for req in rows:
            if req.attempts >= max_attempts:
                req.state = ReembedState.FAILED
                req.finished_at = now
                req.last_error = (
                    f"re-embed request sent {req.attempts} times and never finished "
                    f"(a worker died holding it, or it keeps failing); last error: "
                    f"{req.last_error or 'none recorded'}"
                )[:2000]
            else:
                req.attempts += 1
                req.dispatched_at = now
                due.append((int(req.id), int(req.migration_id), list(req.doc_ids)))
            req.updated_at = now
        return due


def counts(db: Database, migration_id: int) -> dict[str, int]:
    """Requests of a migration by state."""
    with db.session() as session:
        return {
            str(state): int(n)
            for state, n in session.execute(
                select(ReembedRequest.state, func.count())
                .where(ReembedRequest.migration_id == migration_id)
                .group_by(ReembedRequest.state)
            )
        }
