"""What a migration was planned on: its source, recorded without secrets, and a fingerprint.

A worker compares the recorded source with its own configured one before it claims a range
(as it compares models): a worker configured for another table, column or database refuses
instead of embedding the wrong corpus into the shadow. Host and port are recorded for the
operator but not compared: the same database is ``postgres:5432`` inside compose and
``127.0.0.1:5432`` from the host.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.engine import make_url

from backfleet.errors import SourceMismatch
from backfleet.settings import SourceSettings, redact_url

#: the fields that must be equal for a worker to embed a migration's ranges
COMPARED = ("dialect", "database", "table", "id_column", "text_column", "id_type")


def source_identity(settings: SourceSettings, id_type: str) -> dict[str, Any]:
    """The source as JSON: URL parts without user or password, table, columns, id type."""
    try:
        url = make_url(settings.url)
        dialect, host, port, database = url.get_backend_name(), url.host, url.port, url.database
    except Exception:  # an unparsable URL fails later with its own error; keep it redacted
        dialect, host, port, database = redact_url(settings.url), None, None, None
    return {
        "dialect": dialect,
        "host": host,
        "port": port,
        "database": database,
        "table": settings.table,
        "id_column": settings.id_column,
        "text_column": settings.text_column,
        "updated_at_column": settings.updated_at_column,
        "id_type": id_type,
    }


def source_fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of the compared fields (16 hex digits)."""
    compared = {k: identity.get(k) for k in COMPARED}
    return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:16]


def describe(identity: dict[str, Any]) -> str:
    where = f"{identity.get('database')}" + (
        f"@{identity['host']}:{identity['port']}" if identity.get("host") else ""
    )
    return (
        f"table {identity.get('table')!r} ({identity.get('id_column')}: "
        f"{identity.get('id_type')}, text {identity.get('text_column')!r}) in {where}"
    )


def require_same_source(recorded: dict[str, Any] | None, own: dict[str, Any], where: str) -> None:
    """Raise :class:`SourceMismatch` when ``own`` is not the recorded source.

    ``recorded`` None: a migration planned before revision 0004, accepted as before.
    """
    if recorded is None or source_fingerprint(recorded) == source_fingerprint(own):
        return
    differs = ", ".join(
        f"{k} {recorded.get(k)!r} != {own.get(k)!r}"
        for k in COMPARED
        if recorded.get(k) != own.get(k)
    )
    raise SourceMismatch(
        f"{where} was planned on {describe(recorded)}; this worker's source is "
        f"{describe(own)} ({differs})",
        hint="run this worker with the migration's source.url / source.table / "
        "source.id_column / source.text_column (env BACKFLEET_SOURCE__TABLE …)",
    )
