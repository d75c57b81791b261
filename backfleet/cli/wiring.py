"""Build the services a command needs from settings, with one clear error per failure."""

from __future__ import annotations

from typing import Any

from backfleet.db.schema import current_revision, head_revision
from backfleet.db.session import Database, check_reachable, make_engine
from backfleet.errors import ConfigError
from backfleet.settings import Settings
from backfleet.source import Source
from backfleet.vectorstore import VectorStore


def open_db(settings: Settings, *, require_schema: bool = True) -> Database:
    db = Database(settings.database_url)
    check_reachable(db.engine, what="database_url")
    if require_schema:
        current, head = current_revision(db.engine), head_revision(db.engine)
        if current != head:
            raise ConfigError(
                f"checkpoint schema is at {current or 'nothing'}, the code needs {head}",
                hint="run `backfleet db upgrade`",
            )
    return db


def open_source(settings: Settings) -> Source:
    return Source(make_engine(settings.source.url, what="source.url"), settings.source)


def open_store(settings: Settings) -> VectorStore:
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    return VectorStore(settings.milvus_uri, token)


def celery_app(settings: Settings, *, eager: bool = False) -> Any:
    from workers.app import create_app

    return create_app(settings, eager=eager)


def check_broker(app: Any, settings: Settings) -> None:
    """Fail fast with one line when the broker is down, instead of Celery's retry loop."""
    from backfleet.errors import BrokerUnavailable
    from backfleet.settings import redact_url

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        raise BrokerUnavailable(
            f"cannot reach the broker {redact_url(settings.broker_url)}: {exc}",
            hint="start Redis or fix broker_url",
        ) from None
