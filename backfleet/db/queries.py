"""Read queries shared by the coordinator's steps."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select

from backfleet.db.session import Database

T = TypeVar("T")


def latest_of_migration(db: Database, model: type[T], migration_id: int, order_by: Any) -> T | None:
    """The newest row of ``model`` for a migration (by ``order_by``), detached, or ``None``."""
    with db.session() as session:
        row = (
            session.execute(
                select(model)
                .where(model.migration_id == migration_id)  # type: ignore[attr-defined]
                .order_by(order_by.desc())
                .limit(1)
            )
            .scalars()
            .first()
        )
        if row is not None:
            session.expunge(row)
        return row
