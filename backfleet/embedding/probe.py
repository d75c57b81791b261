"""Establish an embedder's model identity through the fleet throttle and the retry layer.

The fingerprint of a remote model costs one provider request (the vectors of the fixed
probe texts). Sent bare, a 429 or a 5xx on that request failed whatever needed the
identity; here it is one more provider call: limited fleet-wide, retried on Retryable
errors, honouring Retry-After. A model whose identity needs no request (local) is returned
as is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from backfleet.embedding.base import Embedder, Matrix
from backfleet.embedding.identity import PROBE_TEXTS, ModelIdentity
from backfleet.embedding.retry import call_provider
from backfleet.throttle import Throttle


@runtime_checkable
class ProbedIdentity(Protocol):
    """An embedder whose identity is computed from the provider's vectors for PROBE_TEXTS."""

    provider: str
    name: str

    def identity_from_probe(self, probe: Matrix) -> ModelIdentity: ...


def establish_identity(
    embedder: Embedder, throttle: Throttle, *, max_attempts: int = 6, max_wait: float = 60.0
) -> ModelIdentity:
    """The embedder's identity, probing the provider under ``throttle`` with retries if needed.

    Raises the probe's last error (``ProviderRetryable`` after the retries, or a permanent
    one) and caches nothing then: the next call probes again.
    """
    if not isinstance(embedder, ProbedIdentity) or "identity" in vars(embedder):
        return embedder.identity  # computed locally, or already established
    result = call_provider(
        embedder,
        throttle,
        list(PROBE_TEXTS),
        max_attempts=max_attempts,
        max_wait=max_wait,
        labels=(embedder.provider, embedder.name),
    )
    return embedder.identity_from_probe(result.vectors)
