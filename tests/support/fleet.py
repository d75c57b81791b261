"""Build a test migration environment: settings, their BACKFLEET_* env, waiting helpers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from backfleet.settings import BackfillSettings, Settings, SourceSettings


def make_settings(
    *,
    pg_url: str,
    redis_url: str,
    milvus_uri: str,
    range_size: int = 2000,
    batch_size: int = 256,
    **extra: Any,
) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    backfill = BackfillSettings(
        range_size=range_size,
        batch_size=batch_size,
        lease_seconds=20,
        heartbeat_seconds=3,
        queue=f"bftest_{suffix}",
        index_type="HNSW",
    )
    return Settings(
        database_url=pg_url,
        broker_url=redis_url,
        redis_url=redis_url,
        milvus_uri=milvus_uri,
        alias=f"it_{suffix}",
        source=SourceSettings(url=pg_url, table="documents", updated_at_column="updated_at"),
        backfill=extra.pop("backfill", backfill),
        **extra,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The BACKFLEET_* variables that rebuild ``settings`` in a worker process."""
    env: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}__{k.upper()}", v)
        elif value is not None:
            env[prefix] = str(value)

    data = settings.model_dump(mode="json", exclude={"models", "milvus_token"})
    for key, value in data.items():
        walk(f"BACKFLEET_{key.upper()}", value)
    import json

    env["BACKFLEET_MODELS"] = json.dumps(settings.model_dump(mode="json")["models"])
    env["BACKFLEET_LOG_FORMAT"] = "console"
    return env


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
