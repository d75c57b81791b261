"""The one retry layer around a single provider call.

Only :class:`~backfleet.errors.ProviderRetryable` (429, 5xx, timeouts, connection errors) is
retried, with exponential backoff and jitter. A 429's ``retry_after`` advice is honoured: the
wait is at least that long, but never longer than ``max_wait``. After ``max_attempts`` the
last error is raised unchanged, so the caller's decision (fail the range, isolate a batch)
is still made on its type. The SDK's own retries must be off (``max_retries=0``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from backfleet import metrics
from backfleet.embedding.base import Embedder, EmbedResult
from backfleet.errors import (
    BackfleetError,
    ProviderRateLimited,
    ProviderRetryable,
    ProviderTimeout,
)
from backfleet.throttle import Throttle

T = TypeVar("T")

log = structlog.get_logger(__name__)


class _Wait:
    """Exponential backoff with jitter, raised to the provider's Retry-After, capped."""

    def __init__(self, base_wait: float, max_wait: float) -> None:
        self._max_wait = max_wait
        self._backoff = wait_exponential_jitter(initial=base_wait, max=max_wait, jitter=base_wait)

    def __call__(self, state: RetryCallState) -> float:
        wait = float(self._backoff(state))
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return max(0.0, min(wait, self._max_wait))


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "provider_retry",
        attempt=state.attempt_number,
        wait=round(wait, 3),
        error=type(exc).__name__,
        reason=str(exc),
        retry_after=getattr(exc, "retry_after", None),
    )


def call_with_retries(
    fn: Callable[[], T],
    *,
    max_attempts: int = 5,
    max_wait: float = 60.0,
    base_wait: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    dont_retry: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``fn`` (one provider call) until it succeeds, retrying only retryable errors.

    ``max_attempts`` counts calls, the first one included. ``base_wait`` is the first
    backoff (doubled each attempt, plus up to ``base_wait`` of jitter). ``sleep`` is
    injectable for tests. ``dont_retry`` names retryable errors raised at once instead (the
    caller handles them, e.g. splits a request that timed out).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    retrying = Retrying(
        retry=retry_if_exception(
            lambda exc: isinstance(exc, ProviderRetryable) and not isinstance(exc, dont_retry)
        ),
        stop=stop_after_attempt(max_attempts),
        wait=_Wait(base_wait, max_wait),
        before_sleep=_log_retry,
        sleep=sleep,
        reraise=True,
    )
    return retrying(fn)


def call_provider(
    embedder: Embedder,
    throttle: Throttle,
    texts: list[str],
    *,
    max_attempts: int = 6,
    max_wait: float = 60.0,
    split_timeouts: bool = False,
    labels: tuple[str, str] | None = None,
) -> EmbedResult:
    """One provider call under the fleet-wide limiter, retried by tenacity on Retryable,
    with its metrics: what the backfill, re-embeds and dual writes all send through.

    ``split_timeouts``: a timeout is raised at once (the caller splits the request).
    ``labels`` (provider, model name) name the metrics; by default the embedder's identity,
    which the identity probe itself cannot use (it is what the probe establishes).
    """
    tokens = sum(embedder.count_tokens(t) for t in texts) if throttle.counts_tokens else 0
    if labels is None:
        ident = embedder.identity
        labels = (ident.provider, ident.name)

    def attempt() -> EmbedResult:
        waited = throttle.acquire(tokens)
        if waited:
            metrics.THROTTLE_WAIT.labels(*labels).inc(waited)
        started = time.monotonic()
        try:
            result = embedder.embed(texts)
        except ProviderRateLimited as exc:
            metrics.REQUESTS.labels(*labels, "rate_limited").inc()
            metrics.RATE_LIMITED.labels(*labels).inc()
            throttle.report_rate_limited(exc.retry_after)
            raise
        except BackfleetError:
            metrics.REQUESTS.labels(*labels, "error").inc()
            raise
        finally:
            metrics.LATENCY.labels(*labels).observe(time.monotonic() - started)
        metrics.REQUESTS.labels(*labels, "ok").inc()
        throttle.observe_headers(result.headers)
        throttle.report_success()
        return result

    return call_with_retries(
        attempt,
        max_attempts=max_attempts,
        max_wait=max_wait,
        dont_retry=(ProviderTimeout,) if split_timeouts else (),
    )
