"""Prometheus metrics of workers and the coordinator (names documented in docs/operations.md).

Workers run several processes (Celery prefork), so ``backfleet worker --metrics-port`` turns
on prometheus-client's multiprocess mode before any metric is created; the coordinator
(``backfleet supervise --metrics-port``) serves its own registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from backfleet.errors import ConfigError

DOCS = Counter("backfleet_documents_embedded_total", "Documents embedded and upserted", ["model"])
TOKENS = Counter("backfleet_tokens_embedded_total", "Tokens billed by the provider", ["model"])
REQUESTS = Counter(
    "backfleet_provider_requests_total",
    "Provider calls by outcome",
    ["provider", "model", "outcome"],
)
RATE_LIMITED = Counter(
    "backfleet_provider_rate_limited_total", "Provider calls answered 429", ["provider", "model"]
)
LATENCY = Histogram(
    "backfleet_provider_call_seconds",
    "Latency of one provider call",
    ["provider", "model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
THROTTLE_WAIT = Counter(
    "backfleet_throttle_wait_seconds_total",
    "Time spent waiting on the fleet-wide rate limiter",
    ["provider", "model"],
)
DEAD_LETTERED = Counter(
    "backfleet_documents_dead_lettered_total", "Documents rejected, skipped or truncated", ["kind"]
)
RANGES = Gauge(
    "backfleet_ranges",
    "Ranges by state (coordinator)",
    ["migration", "state"],
    multiprocess_mode="livemax",
)
DEAD_LETTERS = Gauge(
    "backfleet_dead_letters",
    "Dead letters by kind (coordinator)",
    ["migration", "kind"],
    multiprocess_mode="livemax",
)
DOCS_DONE = Gauge(
    "backfleet_migration_documents_done",
    "Documents done (coordinator)",
    ["migration"],
    multiprocess_mode="livemax",
)


def serve_metrics(port: int, *, multiprocess: bool, host: str = "0.0.0.0") -> None:
    """Expose /metrics on ``port``; a taken port is a clear error, not a crash."""
    registry: CollectorRegistry | None = None
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        if registry is None:
            start_http_server(port, addr=host)
        else:
            start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on port {port}: {exc.strerror}",
            hint="pick a free --metrics-port",
        ) from None
