"""Can this worker serve a migration? Checked at worker start, and reported when a task cannot.

At ``backfleet worker`` start, :func:`refuse_unservable` checks every active migration whose
tasks come to this worker's queue against this worker's settings (:func:`check_migration`)
and refuses to start, with the reasons, when one cannot be served. A task that cannot get
as far as its claim (the model's identity cannot be established, an unknown model label,
another model, a missing generation) records why with :func:`report_not_ready`: an Event on
the migration (actor = the worker process) and the range's ``last_error``, without claiming
the range or counting an attempt. ``backfleet status`` shows those events
(``coordinator.status``, ``worker_errors``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from backfleet.db.checkpoint import record_event, utcnow
from backfleet.db.models import Event, Migration, Range, RangeState
from backfleet.db.session import Database
from backfleet.embedding.identity import ModelIdentity
from backfleet.errors import BackfleetError, ConfigError, NotFound, Permanent
from backfleet.lifecycle import FILLING
from backfleet.logs import get_logger
from backfleet.settings import Settings

log = get_logger("backfleet.worker")

#: the events a worker records when it cannot serve a migration's task
MODEL_UNAVAILABLE = "worker_model_unavailable"
CANNOT_SERVE = "worker_cannot_serve"
WORKER_ERROR_KINDS = (MODEL_UNAVAILABLE, CANNOT_SERVE)
#: a repeated report (same worker, kind and reason) within this long refreshes the last one
REPEAT_SECONDS = 300.0

_IDENTITY_FIELDS = ("provider", "name", "version", "dimension", "metric")


def serves_queue(migration: Migration, queue: str) -> bool:
    """Whether the migration's tasks go to ``queue`` (its planned settings name the queue)."""
    snapshot = migration.settings_snapshot or {}
    planned = (snapshot.get("backfill") or {}).get("queue")
    return planned is None or planned == queue


def active_migrations(db: Database, queue: str) -> list[Migration]:
    with db.session() as session:
        rows = list(
            session.scalars(
                select(Migration).where(Migration.state.in_(FILLING)).order_by(Migration.id)
            ).all()
        )
        for row in rows:
            session.expunge(row)
    return [m for m in rows if serves_queue(m, queue)]


@dataclass(frozen=True)
class Checks:
    """What :func:`check_migration` may look at besides settings (each may raise)."""

    #: raises NotFound when the Milvus collection does not exist
    generation_exists: Callable[[str], object]
    #: opens this worker's source (reflects its table)
    source_readable: Callable[[], object]


def check_migration(settings: Settings, migration: Migration, checks: Checks) -> list[str]:
    """Why this worker's configuration cannot serve ``migration`` (empty: it can).

    Checked: the migration's target model label is defined here with the same identity
    (provider, name, version, dimension, metric; the fingerprint needs a provider request
    and is checked by the first task), the target generation exists, the source is
    readable. Outages (Milvus or a database unreachable) are not reasons: they pass, and
    the tasks wait for them. This is the hook to extend with more checks (e.g. the
    migration's recorded source against ``settings.source``).
    """
    problems: list[str] = []
    label = migration.target_model
    where = f"migration {migration.id} (alias {migration.alias!r})"
    model = settings.models.get(label)
    if model is None:
        known = ", ".join(sorted(settings.models)) or "none"
        problems.append(
            f"{where} needs model label {label!r}, which this worker's configuration does "
            f"not define (known: {known}); add [models.{label}] to backfleet.toml "
            "(or BACKFLEET_MODELS)"
        )
    else:
        wanted = ModelIdentity.from_json(migration.target_identity)
        diffs = [
            f"{key} {getattr(model, key)!r} != {getattr(wanted, key)!r}"
            for key in _IDENTITY_FIELDS
            if getattr(model, key) != getattr(wanted, key)
        ]
        if diffs:
            problems.append(
                f"{where} needs model {wanted.tag}; this worker's [models.{label}] differs "
                f"({'; '.join(diffs)}): fix [models.{label}] in backfleet.toml"
            )
    generation = migration.target_generation
    uses: list[tuple[str, Callable[[], object], str]] = [
        (
            f"target generation {generation!r}",
            functools.partial(checks.generation_exists, generation),
            "milvus_uri",
        ),
        (f"source table {settings.source.table!r}", checks.source_readable, "source.url/table"),
    ]
    for what, check, setting in uses:
        try:
            check()
        except (NotFound, Permanent) as exc:
            problems.append(f"{where}: {what} cannot be used: {exc.message} (check {setting})")
        except BackfleetError as exc:  # an outage: the tasks wait for it
            log.warning(
                "worker_start_check_skipped", migration=migration.id, what=what, error=str(exc)
            )
    return problems


def refuse_unservable(settings: Settings, db: Database, checks: Checks) -> int:
    """Raise :class:`ConfigError` (one line) if an active migration of this worker's queue
    cannot be served; the number of active migrations checked otherwise. No active
    migration: nothing to check, the worker starts."""
    migrations = active_migrations(db, settings.backfill.queue)
    problems = [p for m in migrations for p in check_migration(settings, m, checks)]
    if problems:
        raise ConfigError(
            "this worker cannot serve " + "; ".join(problems),
            hint="fix the worker's configuration, or run it with the configuration "
            "the migration was planned with",
        )
    return len(migrations)


def report_not_ready(
    db: Database,
    migration_id: int,
    range_id: int,
    *,
    actor: str,
    kind: str,
    error: str,
) -> None:
    """Record why a task could not get to its claim: visible in ``backfleet status``.

    The range's ``last_error`` is set only while it is pending (nobody holds it; no claim, no
    attempt counted). The Event is refreshed rather than repeated while the same worker
    keeps failing the same way.
    """
    now = utcnow()
    reason = error[:500]
    try:
        with db.session() as session:
            session.execute(
                update(Range)
                .where(Range.id == range_id, Range.state == RangeState.PENDING)
                .values(last_error=error[:2000], updated_at=now)
            )
            latest = session.scalars(
                select(Event)
                .where(
                    Event.migration_id == migration_id,
                    Event.kind == kind,
                    Event.actor == actor,
                )
                .order_by(Event.id.desc())
                .limit(1)
            ).first()
            if (
                latest is not None
                and latest.reason == reason
                and _aware(latest.at) > now - timedelta(seconds=REPEAT_SECONDS)
            ):
                latest.at = now
                latest.range_id = range_id
                latest.details = {"repeats": int((latest.details or {}).get("repeats", 1)) + 1}
            else:
                record_event(
                    session,
                    migration_id,
                    kind,
                    actor=actor,
                    reason=reason,
                    range_id=range_id,
                    details={"repeats": 1},
                )
    except BackfleetError as exc:  # the checkpoint database is down too: the log says it
        log.warning("worker_report_failed", migration=migration_id, range=range_id, error=str(exc))


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)
